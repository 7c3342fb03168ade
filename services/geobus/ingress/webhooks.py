"""Who may submit a document: Standard Webhooks signatures and idempotency keys.

With ``GEOBUS_WEBHOOK_SECRETS`` set, every ``POST /v1/features`` must be
signed (:mod:`geobus.signing`). The headers' presence, form and timestamp
are checked before a byte of the body is read (:func:`verifier_for`: a cheap
refusal); the HMAC is fed chunk by chunk while the body streams to the spool
and compared at its end. Without secrets the ingress accepts unsigned
requests, and only on a loopback address unless ``GEOBUS_ALLOW_UNSIGNED`` is
set (:func:`check_exposure`, called at start-up).

A sender's retry finds its first job through a scoped idempotency key, kept
unique in the store's job ledger (so it holds across restarts and replicas):

- signed: ``webhook:<webhook-id>`` — one namespace for the deployment, since
  every configured secret belongs to the same sender (several only while one
  rotates), and a retry may be signed with the new secret;
- unsigned: ``key:<client>:<Idempotency-Key>`` (or ``webhook-id`` when there
  is no Idempotency-Key), ``<client>`` being what admission calls the client
  (``GEOBUS_CLIENT_HEADER`` or the remote address), so that two clients
  cannot collide or look up each other's jobs by guessing keys.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Mapping

from geobus.errors import ConfigurationError
from geobus.settings import Settings
from geobus.signing import Verifier, check_timestamp, parse_headers, parse_secret

log = logging.getLogger(__name__)

MAX_KEY_LENGTH = 256


class InvalidKeyError(ValueError):
    """The Idempotency-Key header is not a short printable string."""


@functools.lru_cache(maxsize=8)
def _keys(secrets: tuple[str, ...]) -> tuple[bytes, ...]:
    return tuple(parse_secret(secret) for secret in secrets)


def signed(settings: Settings) -> bool:
    """Whether requests must be signed."""
    return bool(settings.webhook_secrets)


def verifier_for(settings: Settings, headers: Mapping[str, str], now: float) -> Verifier | None:
    """A verifier to feed the body to, or None when requests are not signed.

    Raises SignatureError, before the body is read, when the headers are
    missing or malformed or the timestamp is outside the tolerance.
    """
    if not signed(settings):
        return None
    parsed = parse_headers(
        headers.get("webhook-id"),
        headers.get("webhook-timestamp"),
        headers.get("webhook-signature"),
    )
    check_timestamp(parsed, now, settings.webhook_tolerance)
    return Verifier(_keys(settings.webhook_secrets), parsed)


def idempotency_key(
    verifier: Verifier | None, headers: Mapping[str, str], client: str
) -> str | None:
    """The scoped key a retry of this request carries too, or None (see the module docstring)."""
    if verifier is not None:
        return f"webhook:{verifier.headers.message_id}"
    raw = headers.get("idempotency-key") or headers.get("webhook-id")
    if raw is None:
        return None
    # RFC 8941 string form ("…") as the Idempotency-Key draft writes it, or bare.
    key = raw.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not key or len(key) > MAX_KEY_LENGTH or not all(" " <= c <= "~" for c in key):
        msg = f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} printable ASCII characters"
        raise InvalidKeyError(msg)
    return f"key:{client}:{key}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (GEOBUS_HTTP_HOST) is reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_exposure(settings: Settings) -> None:
    """Refuse to serve unsigned requests beyond this machine unless told to; warn otherwise.

    Raises ConfigurationError with the reason and the way out.
    """
    if signed(settings):
        log.info(
            "POST /v1/features requires Standard Webhooks signatures (%d secret(s))",
            len(settings.webhook_secrets),
        )
        return
    if not is_loopback(settings.http_host) and not settings.allow_unsigned:
        msg = (
            f"GEOBUS_HTTP_HOST={settings.http_host} is not a loopback address and"
            " GEOBUS_WEBHOOK_SECRETS is not set: anyone who reaches the ingress could submit"
            " jobs. Set GEOBUS_WEBHOOK_SECRETS (whsec_…) so requests must be signed, or"
            " GEOBUS_ALLOW_UNSIGNED=1 to accept unsigned requests on purpose."
        )
        raise ConfigurationError(msg)
    log.warning(
        "requests are NOT signed (GEOBUS_WEBHOOK_SECRETS is unset); listening on %s%s",
        settings.http_host,
        " because GEOBUS_ALLOW_UNSIGNED is set" if settings.allow_unsigned else " (loopback)",
    )
