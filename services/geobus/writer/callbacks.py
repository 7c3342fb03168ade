"""POST the job document to the client's ``callback_url`` when a job ends.

The request is signed with Standard Webhooks headers (``webhook-id``,
``webhook-timestamp``, ``webhook-signature``) when a callback secret is
configured, so the client can tell geobus's callbacks from forgeries. It goes
through :mod:`geobus.outbound`, which refuses internal addresses at connect
time (SSRF) and never follows redirects. Delivery is retried with
exponential backoff and full jitter; a callback that still fails is logged
and given up — the outcome is in the ledger and on the bus either way.

A refusal is final and not retried: an address the guard refuses, or a
redirect (3xx), cannot turn into a delivery by asking again. It is logged
once at WARNING with the job id and the reason, never the URL (its user
information or query may be the client's secret). Every callback is counted
once in ``geobus_callbacks_total{outcome=delivered|refused|failed}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from typing import Any

import httpcore

from geobus import metrics, signing
from geobus.outbound import (
    ForbiddenAddressError,
    IPNetwork,
    Resolver,
    guarded_pool,
    system_resolver,
)

log = logging.getLogger(__name__)

ATTEMPTS = 5
FIRST_DELAY_S = 1.0
TIMEOUT_S = 10.0


class CallbackSender:
    """Delivers job documents; one per writer process (it holds a connection pool)."""

    def __init__(
        self,
        *,
        key: bytes | None = None,
        allow: tuple[IPNetwork, ...] = (),
        resolver: Resolver = system_resolver,
        attempts: int = ATTEMPTS,
        first_delay_s: float = FIRST_DELAY_S,
    ) -> None:
        self._key = key
        self._pool = guarded_pool(allow, resolver)
        self._attempts = attempts
        self._first_delay = first_delay_s

    def headers(self, message_id: str, body: bytes, now: int) -> list[tuple[bytes, bytes]]:
        """The request headers, signed when a key is configured."""
        headers = [(b"content-type", b"application/json"), (b"user-agent", b"geobus")]
        if self._key is not None:
            signature = signing.sign(self._key, message_id, now, [body])
            headers += [
                (b"webhook-id", message_id.encode()),
                (b"webhook-timestamp", str(now).encode()),
                (b"webhook-signature", signature.encode()),
            ]
        return headers

    async def deliver(self, url: str, document: dict[str, Any]) -> bool:
        """POST ``document`` to ``url`` until a 2xx answer or a refusal; True when delivered."""
        try:
            outcome = await self._deliver(url, document)
        except Exception:
            # A callback must never take the writer down; a bug here is still counted.
            log.exception("callback for job %s failed: unexpected error", document.get("jobID"))
            outcome = "failed"
        metrics.CALLBACKS.labels(outcome).inc()
        return outcome == "delivered"

    async def _deliver(self, url: str, document: dict[str, Any]) -> str:
        """``"delivered"``, ``"refused"`` (final, logged once) or ``"failed"`` (retries spent)."""
        job_id = document.get("jobID")
        body = json.dumps(document).encode()
        # One id for every attempt: the receiver deduplicates retries on it.
        message_id = f"msg_{uuid.uuid4().hex}"
        delay = self._first_delay
        for attempt in range(1, self._attempts + 1):
            # Signed afresh per attempt: the timestamp must be recent.
            headers = self.headers(message_id, body, int(time.time()))
            try:
                response = await self._pool.request(
                    "POST",
                    url,
                    headers=headers,
                    content=body,
                    extensions={
                        "timeout": {
                            "connect": TIMEOUT_S,
                            "read": TIMEOUT_S,
                            "write": TIMEOUT_S,
                            "pool": TIMEOUT_S,
                        }
                    },
                )
            except ForbiddenAddressError as exc:
                log.warning("callback for job %s refused: %s", job_id, exc.why)
                return "refused"
            except httpcore.ConnectError as exc:
                outcome = str(exc)
            except (
                httpcore.TimeoutException,
                httpcore.NetworkError,
                httpcore.ProtocolError,
            ) as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            else:
                if 200 <= response.status < 300:
                    return "delivered"
                if 300 <= response.status < 400:
                    # Not followed: a redirect could point anywhere, the guard's
                    # networks included. Its Location is not logged (it may
                    # carry a secret); asking again gets the same answer.
                    log.warning(
                        "callback for job %s refused: the receiver answered %d (a redirect,"
                        " which geobus does not follow)",
                        job_id,
                        response.status,
                    )
                    return "refused"
                outcome = f"HTTP {response.status}"
            log.warning(
                "callback for job %s failed (attempt %d/%d): %s",
                job_id,
                attempt,
                self._attempts,
                outcome,
            )
            if attempt < self._attempts:
                await asyncio.sleep(random.uniform(0, delay))  # noqa: S311 - jitter only
                delay *= 2
        return "failed"

    async def close(self) -> None:
        """Close the connection pool."""
        await self._pool.aclose()
