"""Slice a GeoJSON document into raw feature texts while it is read.

The scanner never decodes coordinates: it finds where each feature object
starts and ends with a handful of C-level regular-expression matches per
feature (runs without strings or braces are skipped in one match, however
many coordinates they hold), so memory stays bounded by the largest single
feature, not by the document.

Three framings are understood:

- ``json``: one JSON text — a FeatureCollection (its ``features`` array is
  streamed element by element), a Feature, or a bare Geometry;
- ``seq``: GeoJSON Text Sequences (RFC 8142), records introduced by 0x1E;
- ``ndjson``: newline-delimited GeoJSON, one Feature or Geometry per line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Literal

import msgspec

from geobus.errors import DocumentError

Framing = Literal["json", "seq", "ndjson"]

CHUNK_BYTES = 1 << 20

# Inside an object only braces matter for finding its end: strings are matched
# whole (so braces inside them are ignored) and everything else — numbers,
# brackets, commas, colons, literals, whitespace — is skipped as one run.
_TOKEN = re.compile(rb'[^"{}]+|"[^"\\]*(?:\\.[^"\\]*)*"|[{}]', re.DOTALL)
# Everything that is not a brace, strings matched whole (braces inside them
# do not count); stops before a brace or before a string not closed yet.
# Possessive quantifiers: nothing here ever needs to backtrack, and not
# recording backtrack points makes the match ~20% faster.
_STRING = rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"'
_SKIP = re.compile(rb"(?:[^\"{}]++|" + _STRING + rb")*+", re.DOTALL)


def _object_pattern(depth: int) -> bytes:
    """A JSON object whose objects nest at most ``depth`` levels, strings matched whole."""
    inner = rb'[^"{}]++|' + _STRING
    if depth > 1:
        inner += rb"|" + _object_pattern(depth - 1)
    return rb"\{(?:" + inner + rb")*+\}"


# A whole feature in one C-level match (a Feature, its geometry and
# properties objects, objects inside properties): one call per feature
# instead of one per brace. Deeper nesting, or a feature not yet wholly in the
# buffer, fails the match and takes the brace-by-brace loop.
_OBJECT = re.compile(_object_pattern(5), re.DOTALL)
_OPEN, _CLOSE = ord("{"), ord("}")
_WS = re.compile(rb"[ \t\r\n]*")
_FEATURES_OPEN = re.compile(rb"[ \t\r\n]*:[ \t\r\n]*\[")
_COLON = re.compile(rb"[ \t\r\n]*:")
_UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(slots=True)
class RawItem:
    """One element of the document: the raw JSON text of a feature (or of
    whatever stood where a feature should be)."""

    index: int
    text: bytes
    offset: int


@dataclass(slots=True)
class TopLevel:
    """What the scanner learnt about the document besides its features.

    ``members`` is the top-level JSON object with the ``features`` array
    emptied (``"features":[]``), or the whole document when it had none.
    """

    framing: Framing
    streamed_features: bool = False
    members: bytes = b""
    extra: dict[str, object] = field(default_factory=dict)
    # The members before the "features" array, as one JSON object, known
    # before the first feature is handed out (where a legacy "crs" stands).
    head: bytes = b""


class _Buffer:
    """A growing window over the stream; ``base`` is the document offset of ``data[0]``."""

    def __init__(self, stream: BinaryIO, chunk: int) -> None:
        self.stream = stream
        self.chunk = chunk
        # bytearray: appending a chunk is amortised O(1), so one huge feature
        # read in many chunks is not copied again and again.
        self.data = bytearray()
        self.base = 0
        self.eof = False

    def more(self) -> bool:
        """Read one more chunk; False at end of stream."""
        if self.eof:
            return False
        block = self.stream.read(self.chunk)
        if not block:
            self.eof = True
            return False
        self.data += block
        return True

    def drop_before(self, pos: int) -> int:
        """Forget bytes before ``pos``; return how far positions moved."""
        if pos > 0:
            del self.data[:pos]
            self.base += pos
        return pos

    def truncated(self, pos: int, where: str) -> DocumentError:
        return DocumentError("document_truncated", f"the document ends {where}", self.base + pos)


class Scanner:
    """Iterate over the raw features of a document; see the module docstring."""

    def __init__(self, stream: BinaryIO, framing: Framing = "json", chunk: int = CHUNK_BYTES):
        self._buf = _Buffer(stream, chunk)
        self.top = TopLevel(framing=framing)

    def __iter__(self) -> Iterator[RawItem]:
        if self.top.framing == "json":
            return self._json()
        return self._records()

    # -- JSON document ---------------------------------------------------

    def _token(self, pos: int, where: str) -> re.Match[bytes]:
        """The next token at ``pos``, reading more until it is complete.

        A run (anything but strings and braces) may be returned cut at the
        end of the window: callers only skip runs, and re-matching a long
        coordinate run after every chunk would be quadratic.
        """
        buf = self._buf
        while True:
            m = _TOKEN.match(buf.data, pos)
            if m is not None and (
                m.end() < len(buf.data) or buf.eof or buf.data[pos] not in b'"{}'
            ):
                return m
            if not buf.more():
                if m is not None:
                    return m
                raise buf.truncated(pos, where)

    def _json(self) -> Iterator[RawItem]:
        buf = self._buf
        pos = self._skip_ws(0, allow_bom=True)
        if pos >= len(buf.data):
            raise DocumentError("document_empty", "the document is empty", 0)
        if buf.data[pos : pos + 1] != b"{":
            raise DocumentError(
                "document_not_object",
                "a GeoJSON document must be a JSON object (FeatureCollection, Feature or"
                f" Geometry); it starts with {bytes(buf.data[pos : pos + 16])!r}",
                buf.base + pos,
            )
        # The top-level object is kept (it is small, or it is a single feature
        # that must be read whole anyway), except for the features array,
        # whose elements are handed out and forgotten one by one.
        members: list[bytes] = []
        start = pos
        depth = 0
        index = 0
        while True:
            if pos >= len(buf.data) and not buf.more():
                raise buf.truncated(pos, "inside the top-level object")
            m = self._token(pos, "inside the top-level object")
            token = m.group()
            pos = m.end()
            if token == b"{":
                depth += 1
            elif token == b"}":
                depth -= 1
                if depth == 0:
                    break
            elif depth == 1 and token == b'"features"':
                opened = self._match_more(_FEATURES_OPEN, pos)
                if opened is not None:
                    members.append(bytes(buf.data[start:opened]))
                    self.top.head = members[-1] + b"]}"
                    self.top.streamed_features = True
                    for item in self._array_elements(opened, index):
                        index = item.index + 1
                        yield item
                    # The window now starts at the array's closing bracket.
                    pos = start = 0
        members.append(bytes(buf.data[start:pos]))
        self.top.members = b"".join(members)
        self._expect_end(pos)

    def _array_elements(self, pos: int, index: int) -> Iterator[RawItem]:
        """Yield the elements of the array whose ``[`` ends just before ``pos``."""
        buf = self._buf
        first = True
        while True:
            pos = self._skip_ws(pos)
            if pos >= len(buf.data):
                raise buf.truncated(pos, "inside the features array")
            ch = buf.data[pos : pos + 1]
            if ch == b"]":
                buf.drop_before(pos)
                return
            if not first:
                if ch != b",":
                    raise DocumentError(
                        "document_malformed",
                        f"expected ',' or ']' after feature {index - 1}, found {bytes(ch)!r}",
                        buf.base + pos,
                    )
                pos = self._skip_ws(pos + 1)
                if pos >= len(buf.data):
                    raise buf.truncated(pos, "inside the features array")
            first = False
            pos -= buf.drop_before(pos)
            end = self._value_end(pos)
            yield RawItem(index=index, text=bytes(buf.data[pos:end]), offset=buf.base + pos)
            index += 1
            pos = end

    def _value_end(self, pos: int) -> int:
        """End offset of the JSON value starting at ``pos`` (reading more as needed)."""
        buf = self._buf
        whole = _OBJECT.match(buf.data, pos)
        if whole is not None:
            return whole.end()
        if buf.data[pos : pos + 1] == b"{":
            depth = 0
            cur = pos
            while True:
                # One C-level match skips everything up to the next brace,
                # strings included: a feature costs a few Python steps, not
                # one per property.
                m = _SKIP.match(buf.data, cur)
                cur = m.end() if m else cur
                if cur >= len(buf.data):
                    if not buf.more():
                        raise buf.truncated(cur, "inside a feature")
                    continue
                ch = buf.data[cur]
                if ch == _OPEN:
                    depth += 1
                elif ch == _CLOSE:
                    depth -= 1
                    if depth == 0:
                        return cur + 1
                elif not buf.more():
                    # A '"' whose string does not end before the window does.
                    raise buf.truncated(cur, "inside a string")
                else:
                    continue
                cur += 1
        # Not an object (a number, string, array...): rare and wrong, so a
        # slow path is fine.
        while True:
            try:
                return pos + _non_object_length(bytes(buf.data[pos:]), buf.eof)
            except _NeedMoreError:
                if not buf.more():
                    raise buf.truncated(pos, "inside the features array") from None

    # -- helpers -----------------------------------------------------------

    def _skip_ws(self, pos: int, *, allow_bom: bool = False) -> int:
        buf = self._buf
        if allow_bom:
            while len(buf.data) < len(_UTF8_BOM) and buf.more():
                pass
            if buf.data.startswith(_UTF8_BOM):
                # RFC 8259 §8.1: parsers MAY ignore a BOM; GeoJSON written by
                # Windows tools often starts with one.
                pos = len(_UTF8_BOM)
        while True:
            m = _WS.match(buf.data, pos)
            end = m.end() if m else pos
            if end < len(buf.data) or not buf.more():
                return end
            pos = end

    def _match_more(self, pattern: re.Pattern[bytes], pos: int) -> int | None:
        """Match ``pattern`` at ``pos``, reading more while it could still match."""
        buf = self._buf
        while True:
            m = pattern.match(buf.data, pos)
            if m is not None:
                return m.end()
            tail = bytes(buf.data[pos:])
            if len(tail) < 64 and tail.strip(b" \t\r\n:") == b"" and buf.more():
                continue
            return None

    def _expect_end(self, pos: int) -> None:
        buf = self._buf
        end = self._skip_ws(pos)
        if end < len(buf.data):
            raise DocumentError(
                "document_trailing_data",
                "unexpected data after the end of the GeoJSON object: "
                f"{bytes(buf.data[end : end + 16])!r}",
                buf.base + end,
            )

    # -- sequences ---------------------------------------------------------

    def _records(self) -> Iterator[RawItem]:
        """RFC 8142 (RS-separated) and NDJSON (LF-separated) records."""
        buf = self._buf
        sep = b"\x1e" if self.top.framing == "seq" else b"\n"
        index = 0
        pos = 0
        while True:
            cut = buf.data.find(sep, pos)
            if cut < 0:
                buf.drop_before(pos)
                pos = 0
                if buf.more():
                    continue
                cut = len(buf.data)
                if cut == 0:
                    return
            record = bytes(buf.data[pos:cut])
            offset = buf.base + pos
            pos = cut + 1
            if index == 0 and offset == 0 and record.startswith(_UTF8_BOM):
                record = record[len(_UTF8_BOM) :]
            text = record.strip(b" \t\r\n\x1e")
            if text:
                yield RawItem(index=index, text=text, offset=offset)
                index += 1
            if cut >= len(buf.data) and buf.eof:
                return


class _NeedMoreError(Exception):
    """The window ends before the value does."""


_ELEMENT_END = re.compile(rb"[,\]]")


def _non_object_length(data: bytes, eof: bool) -> int:
    """Length of the non-object JSON value at the start of ``data``."""
    # Try each ',' or ']' as the end until the prefix decodes: quadratic, but
    # only for malformed documents that put arrays or scalars where features
    # belong.
    for m in _ELEMENT_END.finditer(data):
        candidate = data[: m.start()].rstrip(b" \t\r\n")
        try:
            msgspec.json.decode(candidate)
        except msgspec.DecodeError:
            continue
        return len(candidate)
    if eof:
        return len(data)
    raise _NeedMoreError
