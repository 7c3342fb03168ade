"""POST the job document to the client's ``callback_url`` when a job ends.

Delivery is retried with exponential backoff; a callback that still fails is
logged and given up — the job's outcome is in the ledger and on the bus
(``job.completed``) either way. Signing and SSRF protection come with the
security work (issue 5).
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import httpx

log = logging.getLogger(__name__)

ATTEMPTS = 5
FIRST_DELAY_S = 1.0
TIMEOUT_S = 10.0


async def deliver(url: str, document: dict[str, Any], *, attempts: int = ATTEMPTS) -> bool:
    """POST ``document`` to ``url`` until a 2xx answer; True when delivered."""
    delay = FIRST_DELAY_S
    async with httpx.AsyncClient(timeout=TIMEOUT_S, follow_redirects=False) as client:
        for attempt in range(1, attempts + 1):
            try:
                response = await client.post(url, json=document)
            except httpx.HTTPError as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            else:
                if response.is_success:
                    return True
                outcome = f"HTTP {response.status_code}"
            log.warning(
                "callback for job %s to %s failed (attempt %d/%d): %s",
                document.get("jobID"),
                url,
                attempt,
                attempts,
                outcome,
            )
            if attempt < attempts:
                # Full jitter keeps many jobs' retries from arriving together.
                await asyncio.sleep(random.uniform(0, delay))  # noqa: S311
                delay *= 2
    return False
