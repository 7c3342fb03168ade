"""The admin endpoints' bearer token (``GEOBUS_ADMIN_TOKEN``), checked in constant time.

:func:`verdict` is pure: it decides from the ``Authorization`` header and the
configured token alone. :func:`admin_only` wraps an endpoint so that it runs
only for a request carrying ``Authorization: Bearer <token>``; every other
request gets a problem document:

- no token configured → ``403 admin-disabled``: the admin API is off, and no
  credential can turn it on (``WWW-Authenticate`` would invite a retry);
- no ``Authorization`` header, or another scheme → ``401`` with
  ``WWW-Authenticate: Bearer realm="geobus-admin"`` (RFC 6750 §3);
- a bearer token that is not the configured one → ``401`` with
  ``error="invalid_token"`` (RFC 6750 §3.1: a wrong token is an
  authentication failure, so 401, not 403).

The token is never logged, echoed or put into a problem document. The
comparison is :func:`hmac.compare_digest` of the SHA-256 digests of both
tokens, so it takes the same time whatever the presented token has in
common with the real one, its length included.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from geobus.ingress.problem import problem
from geobus.ingress.resources import resources_of

log = logging.getLogger(__name__)

REALM = "geobus-admin"
Endpoint = Callable[[Request], Awaitable[Response]]


class Verdict(enum.Enum):
    """What the ``Authorization`` header of a request amounts to."""

    DISABLED = "disabled"
    MISSING = "missing"
    WRONG = "wrong"
    GRANTED = "granted"


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None for any other header."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    # The auth-scheme is case-insensitive (RFC 9110 §11.1).
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def same_token(presented: str, expected: str) -> bool:
    """Whether two tokens are equal, in time independent of where and whether they differ."""
    # Starlette decodes header bytes as Latin-1: encoding back gives the bytes sent.
    sent = presented.encode("latin-1", errors="replace")
    # Digests make both sides 32 bytes: compare_digest alone leaks the length.
    return hmac.compare_digest(
        hashlib.sha256(sent).digest(), hashlib.sha256(expected.encode()).digest()
    )


def verdict(authorization: str | None, expected: str) -> Verdict:
    """Decide on a request's ``Authorization`` header given the configured token."""
    if not expected:
        return Verdict.DISABLED
    token = bearer_token(authorization)
    if token is None:
        return Verdict.MISSING
    return Verdict.GRANTED if same_token(token, expected) else Verdict.WRONG


def refusal(outcome: Verdict, instance: str) -> Response | None:
    """The problem response for ``outcome``; None when access is granted."""
    if outcome is Verdict.GRANTED:
        return None
    if outcome is Verdict.DISABLED:
        return problem(
            403,
            "the admin API is disabled: set GEOBUS_ADMIN_TOKEN to enable it",
            instance=instance,
            code="admin-disabled",
        )
    if outcome is Verdict.MISSING:
        return problem(
            401,
            "this endpoint needs an admin token: Authorization: Bearer <GEOBUS_ADMIN_TOKEN>",
            instance=instance,
            code="unauthenticated",
            headers={"WWW-Authenticate": f'Bearer realm="{REALM}"'},
        )
    return problem(
        401,
        "the bearer token is not the admin token",
        instance=instance,
        code="invalid-token",
        headers={"WWW-Authenticate": f'Bearer realm="{REALM}", error="invalid_token"'},
    )


def admin_only(endpoint: Endpoint) -> Endpoint:
    """``endpoint``, answered only for requests that carry the admin token."""

    @functools.wraps(endpoint)
    async def guarded(request: Request) -> Response:
        expected = resources_of(request).settings.admin_token
        outcome = verdict(request.headers.get("authorization"), expected)
        refused = refusal(outcome, request.url.path)
        if refused is not None:
            client = request.client.host if request.client else "?"
            # Never the header itself: it may hold a near-miss of the token.
            log.warning(
                "admin request %s %s from %s refused: token %s",
                request.method,
                request.url.path,
                client,
                outcome.value,
            )
            return refused
        return await endpoint(request)

    return guarded
