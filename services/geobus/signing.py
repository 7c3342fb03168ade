"""Standard Webhooks signatures (https://www.standardwebhooks.com), computed incrementally.

A signed request carries ``webhook-id``, ``webhook-timestamp`` (Unix seconds)
and ``webhook-signature``: space-separated ``v1,<base64 HMAC-SHA256>`` over
``"{id}.{timestamp}.{body}"``, keyed with the secret's bytes (the base64 part
of ``whsec_…``). Several signatures and several secrets are accepted so that
secrets can rotate without downtime.

:class:`Verifier` is fed the body chunk by chunk while it streams to the
spool, so the body is never held in memory and never read twice; the final
comparison is constant-time for every (secret, signature) pair.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PREFIX = "whsec_"
VERSION = "v1"
DEFAULT_TOLERANCE_S = 300


class SignatureError(ValueError):
    """The request's signature headers are missing, malformed, stale or wrong.

    ``reason`` is a short code for the problem document (never the secret).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def parse_secret(text: str) -> bytes:
    """The key bytes of a ``whsec_<base64>`` secret; ValueError when it is not one."""
    if not text.startswith(PREFIX):
        msg = f"a webhook secret starts with {PREFIX!r}"
        raise ValueError(msg)
    try:
        key = base64.b64decode(text.removeprefix(PREFIX), validate=True)
    except binascii.Error as exc:
        msg = "a webhook secret is whsec_ followed by base64"
        raise ValueError(msg) from exc
    if len(key) < 24:  # Standard Webhooks asks for 24 to 64 random bytes
        msg = "a webhook secret must hold at least 24 bytes of key"
        raise ValueError(msg)
    return key


@dataclass(frozen=True, slots=True)
class Headers:
    """The three Standard Webhooks headers of one request."""

    message_id: str
    timestamp: int
    signatures: tuple[bytes, ...]


def parse_headers(message_id: str | None, timestamp: str | None, signature: str | None) -> Headers:
    """Check the headers' presence and form; raise SignatureError otherwise."""
    if not message_id or not timestamp or not signature:
        raise SignatureError(
            "signature_missing",
            "webhook-id, webhook-timestamp and webhook-signature are required",
        )
    if len(message_id) > 256:  # an id, not a payload
        raise SignatureError("signature_malformed", "webhook-id is longer than 256 characters")
    # Plain ASCII digits only: int() would also take " 17", "+17" and "1_7".
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        raise SignatureError("signature_malformed", "webhook-timestamp must be Unix seconds")
    moment = int(timestamp)
    candidates = []
    for part in signature.split():
        version, _, value = part.partition(",")
        if version != VERSION:
            continue
        try:
            candidates.append(base64.b64decode(value, validate=True))
        except binascii.Error:
            continue
    if not candidates:
        raise SignatureError(
            "signature_malformed", "webhook-signature holds no v1,<base64> signature"
        )
    return Headers(message_id, moment, tuple(candidates))


def check_timestamp(headers: Headers, now: float, tolerance_s: int = DEFAULT_TOLERANCE_S) -> None:
    """Raise SignatureError when ``webhook-timestamp`` is too far from ``now``, either way."""
    if abs(now - headers.timestamp) > tolerance_s:
        raise SignatureError(
            "signature_expired",
            f"webhook-timestamp is more than {tolerance_s} s away from the server's clock",
        )


class Verifier:
    """Feed the body with :meth:`update`, then call :meth:`verify`."""

    def __init__(self, keys: Sequence[bytes], headers: Headers) -> None:
        if not keys:
            msg = "no secret to verify with"
            raise ValueError(msg)
        self.headers = headers
        prefix = f"{headers.message_id}.{headers.timestamp}.".encode()
        self._macs = [hmac.new(key, prefix, hashlib.sha256) for key in keys]

    def update(self, chunk: bytes) -> None:
        """Add the next piece of the body."""
        for mac in self._macs:
            mac.update(chunk)

    def verify(self, now: float, tolerance_s: int = DEFAULT_TOLERANCE_S) -> None:
        """Raise SignatureError unless a signature matches and the timestamp is fresh."""
        check_timestamp(self.headers, now, tolerance_s)
        digests = [mac.digest() for mac in self._macs]
        # Compare every pair, with no early exit, so timing says nothing
        # about which secret or which signature came close.
        matched = False
        for digest in digests:
            for candidate in self.headers.signatures:
                matched |= hmac.compare_digest(digest, candidate)
        if not matched:
            raise SignatureError("signature_invalid", "no webhook-signature matches the body")


def sign(key: bytes, message_id: str, timestamp: int, chunks: Iterable[bytes]) -> str:
    """The ``webhook-signature`` header value for a body (used for outgoing callbacks)."""
    mac = hmac.new(key, f"{message_id}.{timestamp}.".encode(), hashlib.sha256)
    for chunk in chunks:
        mac.update(chunk)
    return f"{VERSION},{base64.b64encode(mac.digest()).decode()}"
