"""The scanner's one-call-per-window fast path finds exactly what the slow path finds."""

from __future__ import annotations

import io

import pytest

from geobus.codec import scanner
from geobus.codec.scanner import RawItem, Scanner
from geobus.errors import DocumentError

POINT = (
    b'{"type":"Feature","properties":{"n":%d,"s":"a},{b"},'
    b'"geometry":{"type":"Point","coordinates":[%d,1]}}'
)
PLAIN = b'{"type":"Feature","properties":{"n":%d},"geometry":{"type":"Point","coordinates":[%d,1]}}'
TRICKY = [
    # Braces and the boundary pattern inside strings, escapes, nesting.
    b'{"type":"Feature","properties":{"q":"\\"},{\\"","o":{"p":{"q":{}}}},"geometry":null}',
    b'{"type":"Feature","properties":null,"geometry":{"type":"Point","coordinates":[NaN,1]}}',
    b"[1,2]",
    b'"a string where a feature should be"',
    b"42",
    b'{"type":"Feature","properties":{"big":"' + b"x" * 600 + b'"},"geometry":null}',
]


def _document(separator: bytes, tricky_every: int, feature: bytes = POINT) -> bytes:
    items = []
    for n in range(300):
        items.append(feature % (n, n))
        if n % tricky_every == 0:
            items.append(TRICKY[(n // tricky_every) % len(TRICKY)])
    return b'{"type":"FeatureCollection","features":[' + separator.join(items) + b"]}"


def _scan(data: bytes, chunk: int, fast: bool, monkeypatch: pytest.MonkeyPatch) -> list[RawItem]:
    with monkeypatch.context() as patch:
        if not fast:
            patch.setattr(scanner, "_window_elements", lambda *_args: [])
        return list(Scanner(io.BytesIO(data), "json", chunk, 512))


@pytest.mark.parametrize("separator", [b",", b",\n", b", ", b"\n,", b" ,\r\n  "])
@pytest.mark.parametrize("chunk", [97, 1024, 1 << 20])
@pytest.mark.parametrize("tricky_every", [7, 1000])
def test_fast_and_slow_paths_agree(
    separator: bytes, chunk: int, tricky_every: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Index, text, offset and skipped bytes are identical with and without the fast path."""
    data = _document(separator, tricky_every)
    slow = _scan(data, chunk, False, monkeypatch)
    fast = _scan(data, chunk, True, monkeypatch)
    assert [(i.index, i.text, i.offset, i.skipped) for i in fast] == [
        (i.index, i.text, i.offset, i.skipped) for i in slow
    ]
    for item in fast:
        if item.text:
            assert data[item.offset : item.offset + len(item.text)] == item.text


def test_the_fast_path_takes_whole_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """On plain small features most are sliced by the window decode, not one by one."""
    calls: list[int] = []
    original = scanner._window_elements

    def counting(*args: object) -> list[RawItem]:
        items = original(*args)  # type: ignore[arg-type]
        calls.append(len(items))
        return items

    monkeypatch.setattr(scanner, "_window_elements", counting)
    data = _document(b",\n", 10**6, PLAIN)
    items = list(Scanner(io.BytesIO(data), "json", 4096))
    assert len(items) == 301
    assert sum(calls) > 250


def test_a_truncated_document_is_still_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cut after complete features, the document ends inside the array: an error, as before."""
    data = _document(b",", 10**6)[:-500]
    with pytest.raises(DocumentError, match="ends"):
        list(Scanner(io.BytesIO(data), "json", 1024))
