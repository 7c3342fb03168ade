"""Standard Webhooks signatures: verified incrementally, rotated secrets, constant time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

import pytest

from geobus.signing import (
    SignatureError,
    Verifier,
    check_timestamp,
    parse_headers,
    parse_secret,
    sign,
)

KEY = os.urandom(32)
OTHER = os.urandom(32)
SECRET = "whsec_" + base64.b64encode(KEY).decode()
BODY = b'{"type":"FeatureCollection","features":[]}'
NOW = 1_700_000_000


def _reference(key: bytes, msg_id: str, ts: int, body: bytes) -> str:
    """The signature computed the way the specification spells it, in one piece."""
    digest = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _verify(
    keys: list[bytes], signature: str, body: bytes = BODY, ts: int = NOW, now: float = NOW
) -> None:
    verifier = Verifier(keys, parse_headers("msg_1", str(ts), signature))
    for i in range(0, len(body), 7):  # fed in pieces, as the body streams
        verifier.update(body[i : i + 7])
    verifier.verify(now)


def test_secret_parsing() -> None:
    """whsec_ secrets decode to their key; anything else is refused."""
    assert parse_secret(SECRET) == KEY
    for bad in ("secret", "whsec_!!!", "whsec_" + base64.b64encode(b"short").decode()):
        with pytest.raises(ValueError, match="secret"):
            parse_secret(bad)


def test_incremental_signature_matches_the_specification() -> None:
    """sign() over chunks equals HMAC over the whole "{id}.{ts}.{body}"."""
    assert sign(KEY, "msg_1", NOW, [BODY[:5], BODY[5:]]) == _reference(KEY, "msg_1", NOW, BODY)
    _verify([KEY], _reference(KEY, "msg_1", NOW, BODY))


def test_rotated_secrets_and_several_signatures() -> None:
    """Any configured secret and any of several space-separated signatures may match."""
    _verify([OTHER, KEY], _reference(KEY, "msg_1", NOW, BODY))
    header = "v1,bm90IGl0 " + _reference(KEY, "msg_1", NOW, BODY) + " v2,ignored"
    _verify([KEY], header)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("tampered byte", "signature_invalid"),
        ("wrong secret", "signature_invalid"),
        ("301 s old", "signature_expired"),
        ("301 s in the future", "signature_expired"),
        ("no v1 signature", "signature_malformed"),
    ],
)
def test_refusals(case: str, reason: str) -> None:
    """Each way a signature can be wrong is refused with its own reason."""
    good = _reference(KEY, "msg_1", NOW, BODY)
    kwargs: dict[str, object] = {}
    keys = [KEY]
    signature = good
    if case == "tampered byte":
        kwargs["body"] = BODY.replace(b"[]", b"[ ]")
    elif case == "wrong secret":
        keys = [OTHER]
    elif case == "301 s old":
        kwargs["now"] = NOW + 301
    elif case == "301 s in the future":
        kwargs["now"] = NOW - 301
    else:
        signature = "v2," + good.split(",", 1)[1]
    with pytest.raises(SignatureError) as info:
        _verify(keys, signature, **kwargs)  # type: ignore[arg-type]
    assert info.value.reason == reason


def test_missing_and_malformed_headers() -> None:
    """Absent headers and a non-numeric timestamp are refused before any hashing."""
    with pytest.raises(SignatureError, match="required"):
        parse_headers(None, str(NOW), "v1,x")
    with pytest.raises(SignatureError, match="Unix seconds"):
        parse_headers("id", "yesterday", "v1,eA==")


@pytest.mark.parametrize(
    "timestamp", ["+1700000000", " 1700000000", "1_700_000_000", "1.7e9", "-5"]
)
def test_timestamp_must_be_plain_digits(timestamp: str) -> None:
    """int() would take these; the header must be plain ASCII digits."""
    with pytest.raises(SignatureError) as info:
        parse_headers("msg_1", timestamp, _reference(KEY, "msg_1", NOW, BODY))
    assert info.value.reason == "signature_malformed"


def test_timestamp_is_checked_on_its_own() -> None:
    """check_timestamp refuses a timestamp beyond the tolerance either way, before any body."""
    headers = parse_headers("msg_1", str(NOW), _reference(KEY, "msg_1", NOW, BODY))
    check_timestamp(headers, NOW + 300)
    check_timestamp(headers, NOW - 300)
    for now in (NOW + 301, NOW - 301):
        with pytest.raises(SignatureError, match="more than 300 s"):
            check_timestamp(headers, now)
