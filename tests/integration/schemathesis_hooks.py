"""Schemathesis hooks for ``tests/integration/test_schemathesis.py``: sign every POST.

Loaded by ``st run`` through ``SCHEMATHESIS_HOOKS``. Each request schemathesis
sends to ``POST /v1/features`` gets Standard Webhooks headers computed over
the exact bytes it sends (a ``requests`` auth runs on the prepared request,
after serialisation), with the first secret of ``GEOBUS_WEBHOOK_SECRETS``.
A generated ``webhook-id`` that the ingress would take is kept, so that
repeated ids exercise the idempotent ``200`` answer; any other becomes a UUID.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from typing import Any

import requests
import schemathesis

from geobus.signing import parse_secret, sign

_PRINTABLE_ID = re.compile(r"^[!-~]{1,256}$")


class StandardWebhooksAuth(requests.auth.AuthBase):
    """Signs a prepared request's body: webhook-id, webhook-timestamp, webhook-signature."""

    def __init__(self, secret: str) -> None:
        self.key = parse_secret(secret)

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        """Add the three headers over the body as it will be sent."""
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        if not isinstance(body, bytes):
            msg = f"cannot sign a streamed body ({type(body).__name__})"
            raise TypeError(msg)
        message_id = request.headers.get("webhook-id", "")
        if not _PRINTABLE_ID.fullmatch(message_id):
            message_id = str(uuid.uuid4())
        timestamp = int(time.time())
        request.headers["webhook-id"] = message_id
        request.headers["webhook-timestamp"] = str(timestamp)
        request.headers["webhook-signature"] = sign(self.key, message_id, timestamp, [body])
        return request


def _signer() -> StandardWebhooksAuth:
    secret = os.environ["GEOBUS_WEBHOOK_SECRETS"].replace(",", " ").split()[0]
    return StandardWebhooksAuth(secret)


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: schemathesis.Case, kwargs: Any) -> None:
    """Sign the POSTs of documents."""
    if case.method.upper() == "POST" and case.path == "/v1/features":
        kwargs["auth"] = _signer()
