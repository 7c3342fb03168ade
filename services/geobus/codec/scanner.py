"""Slice a GeoJSON document into raw feature texts while it is read.

The scanner never decodes coordinates: it finds where each feature object
starts and ends with a handful of C-level regular-expression matches per
feature (runs without strings or braces are skipped in one match, however
many coordinates they hold), so memory stays bounded by the largest single
feature, not by the document; and a feature larger than ``max_item_bytes`` is
skipped while it streams past (its bytes are dropped as they are read) and
handed out as a :class:`RawItem` with ``skipped`` set, so not even one
feature can make the reader hold more than about that many bytes.

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
MAX_ITEM_BYTES = 64 * 1024 * 1024

# Inside an object only braces matter for finding its end: strings are matched
# whole (so braces inside them are ignored) and everything else — numbers,
# brackets, commas, colons, literals, whitespace — is skipped as one run.
# Possessive: a string not closed yet fails at once instead of backtracking
# through all of its bytes each time more of it is read.
_TOKEN = re.compile(rb'[^"{}]++|"[^"\\]*+(?:\\.[^"\\]*+)*+"|[{}]', re.DOTALL)
# Everything that is not a brace, strings matched whole (braces inside them
# do not count); stops before a brace or before a string not closed yet.
# Possessive quantifiers: nothing here ever needs to backtrack, and not
# recording backtrack points makes the match ~20% faster.
_STRING = rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"'
_SKIP = re.compile(rb"(?:[^\"{}]++|" + _STRING + rb")*+", re.DOTALL)
# The same for a value where an array stands: brackets count too.
_SKIP_ANY = re.compile(rb"(?:[^\"{}\[\]]++|" + _STRING + rb")*+", re.DOTALL)
# The rest of a string whose opening quote was consumed, up to its closing
# quote or the end of the window (a backslash at the very end waits for more).
_STRING_REST = re.compile(rb'(?:[^"\\]++|\\.)*+', re.DOTALL)
# A number or literal where a feature should be, up to what ends it.
_SCALAR = re.compile(rb"[^,\]}\s]*+")


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
_OPENERS, _CLOSERS, _QUOTE = frozenset(b"{["), frozenset(b"}]"), ord('"')
_WS = re.compile(rb"[ \t\r\n]*")
_FEATURES_OPEN = re.compile(rb"[ \t\r\n]*:[ \t\r\n]*\[")
_COLON = re.compile(rb"[ \t\r\n]*:")
_UTF8_BOM = b"\xef\xbb\xbf"
# The window's complete features in one C call (see _window_elements).
_RAW_ELEMENTS = msgspec.json.Decoder(list[msgspec.Raw])
_SEPARATOR = re.compile(rb"[ \t\r\n]*,[ \t\r\n]*")
# How a feature most often ends where the next one starts.
_BOUNDARIES = (b"},{", b"},\n{", b"}, {", b"},\r\n{", b"}\n,{")
_CUT_ATTEMPTS = 2


@dataclass(slots=True)
class RawItem:
    """One element of the document: the raw JSON text of a feature (or of
    whatever stood where a feature should be)."""

    index: int
    text: bytes
    offset: int
    # Bytes of an element larger than the scanner's max_item_bytes, which was
    # skipped unread (``text`` is then empty); 0 for an element handed out.
    skipped: int = 0


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

    def too_large(self, limit: int) -> DocumentError:
        return DocumentError(
            "document_too_large",
            f'the document\'s top level (everything outside its "features" array: a single Feature'
            f" or Geometry, or other members) is larger than {limit} bytes"
            " (GEOBUS_MAX_FEATURE_BYTES)",
            self.base,
        )


class Scanner:
    """Iterate over the raw features of a document; see the module docstring."""

    def __init__(
        self,
        stream: BinaryIO,
        framing: Framing = "json",
        chunk: int = CHUNK_BYTES,
        max_item_bytes: int = MAX_ITEM_BYTES,
    ):
        self._buf = _Buffer(stream, chunk)
        self._max = max_item_bytes
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
        scanned = pos + 1  # how far a string opening at pos is known not to close
        while True:
            m = _TOKEN.match(buf.data, pos)
            if m is not None and (
                m.end() < len(buf.data) or buf.eof or buf.data[pos] not in b'"{}'
            ):
                return m
            while True:
                if len(buf.data) - pos > self._max:
                    # A string longer than a feature may be is not held to its end.
                    raise buf.too_large(self._max)
                if not buf.more():
                    if m is not None:
                        return m
                    raise buf.truncated(pos, where)
                if buf.data[pos] != _QUOTE:
                    break
                # Match the string again only once its closing quote came in:
                # re-matching it from its start after every chunk is quadratic.
                scanned = _match_end(_STRING_REST, buf.data, scanned)
                if scanned < len(buf.data) and buf.data[scanned] == _QUOTE:
                    break

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
            if pos - start > self._max:
                # The top level is kept whole: bounded like one feature.
                raise buf.too_large(self._max)
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
        tried = -1  # document offset of the window end the fast path last saw
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
            if tried != buf.base + len(buf.data):
                # Once per window read: every complete feature in it at once.
                tried = buf.base + len(buf.data)
                items = _window_elements(buf, pos, index, self._max)
                if items:
                    yield from items
                    index += len(items)
                    last = items[-1]
                    pos = last.offset - buf.base + len(last.text)
                    continue
            offset = buf.base + pos
            end, kept = self._value_end(pos)
            if kept:
                yield RawItem(index=index, text=bytes(buf.data[pos:end]), offset=offset)
            else:
                yield RawItem(index=index, text=b"", offset=offset, skipped=buf.base + end - offset)
            index += 1
            pos = end

    def _value_end(self, pos: int) -> tuple[int, bool]:
        """End offset of the JSON value starting at ``pos`` (reading more as needed),
        and whether its bytes are still in the window (False: it was longer than
        ``max_item_bytes`` and was dropped while it was read)."""
        buf = self._buf
        whole = _OBJECT.match(buf.data, pos)
        if whole is not None:
            end = whole.end()
            return end, end - pos <= self._max
        first = buf.data[pos]
        if first in _OPENERS:
            # An array where a feature should be is wrong but must still be
            # stepped over exactly, brackets and all, in linear time.
            return self._container_end(pos, _SKIP if first == _OPEN else _SKIP_ANY)
        return self._scalar_end(pos)

    def _container_end(self, pos: int, skip: re.Pattern[bytes]) -> tuple[int, bool]:
        buf = self._buf
        start = buf.base + pos
        depth = 0
        cur = pos
        kept = True
        in_string = False
        while True:
            if in_string:
                cur = _match_end(_STRING_REST, buf.data, cur)
                if cur < len(buf.data) and buf.data[cur] == _QUOTE:
                    in_string = False
                    cur += 1
                    continue
            else:
                # One C-level match skips everything up to the next brace,
                # strings included: a feature costs a few Python steps, not
                # one per property.
                cur = _match_end(skip, buf.data, cur)
                if cur < len(buf.data):
                    ch = buf.data[cur]
                    cur += 1
                    if ch in _OPENERS:
                        depth += 1
                    elif ch in _CLOSERS:
                        depth -= 1
                        if depth == 0:
                            return cur, kept and buf.base + cur - start <= self._max
                    else:
                        # A '"' whose string does not end in the window:
                        # carry on inside it rather than matching it again.
                        in_string = True
                    continue
            cur, kept = self._need_more(cur, start, kept, "inside a feature")

    def _scalar_end(self, pos: int) -> tuple[int, bool]:
        buf = self._buf
        start = buf.base + pos
        kept = True
        quoted = buf.data[pos] == _QUOTE
        cur = pos + 1 if quoted else pos
        while True:
            if quoted:
                cur = _match_end(_STRING_REST, buf.data, cur)
                if cur < len(buf.data) and buf.data[cur] == _QUOTE:
                    cur += 1
                    break
            else:
                cur = _match_end(_SCALAR, buf.data, cur)
                if cur < len(buf.data) or buf.eof:
                    break
            cur, kept = self._need_more(cur, start, kept, "inside the features array")
        if buf.base + cur == start:
            raise DocumentError(
                "document_malformed",
                f"expected a feature, found {bytes(buf.data[cur : cur + 16])!r}",
                start,
            )
        return cur, kept and buf.base + cur - start <= self._max

    def _need_more(self, cur: int, start: int, kept: bool, where: str) -> tuple[int, bool]:
        """Read another chunk for the value that began at document offset ``start``.

        Once the value is longer than ``max_item_bytes`` what was read of it is
        dropped, so that memory stays bounded however long it goes on.
        """
        buf = self._buf
        if kept and buf.base + len(buf.data) - start > self._max:
            kept = False
        if not kept:
            cur -= buf.drop_before(cur)
        if not buf.more():
            raise buf.truncated(cur, where)
        return cur, kept

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
            if end < len(buf.data):
                return end
            # Whitespace that was skipped is not kept (gigabytes of it are
            # legal JSON); callers only use positions from here on.
            pos = end - buf.drop_before(end)
            if not buf.more():
                return pos

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
        searched = 0  # the separator is not in data[pos:searched]
        skipped = 0  # bytes of an oversize record already dropped
        while True:
            cut = buf.data.find(sep, searched)
            if cut < 0:
                searched = len(buf.data)
                if skipped or len(buf.data) - pos > self._max:
                    # A record larger than a feature may be: dropped as it is read.
                    skipped += len(buf.data) - pos
                    buf.drop_before(len(buf.data))
                    pos = searched = 0
                moved = buf.drop_before(pos)
                pos, searched = 0, searched - moved
                if buf.more():
                    continue
                cut = len(buf.data)
                if cut == 0 and not skipped:
                    return
            offset = buf.base + pos - skipped
            if skipped:
                yield RawItem(index=index, text=b"", offset=offset, skipped=skipped + cut - pos)
                index += 1
                skipped = 0
                pos = searched = cut + 1
                if cut >= len(buf.data) and buf.eof:
                    return
                continue
            size = cut - pos
            record = bytes(buf.data[pos:cut]) if size <= self._max else b""
            pos = searched = cut + 1
            if index == 0 and offset == 0 and record.startswith(_UTF8_BOM):
                record = record[len(_UTF8_BOM) :]
            text = record.strip(b" \t\r\n\x1e")
            if size > self._max:
                # Judged on the record as read, like a record skipped while
                # it streamed in, so that read sizes never change the outcome.
                yield RawItem(index=index, text=b"", offset=offset, skipped=size)
                index += 1
            elif text:
                yield RawItem(index=index, text=text, offset=offset)
                index += 1
            if cut >= len(buf.data) and buf.eof:
                return


def _window_elements(buf: _Buffer, pos: int, index: int, limit: int) -> list[RawItem]:
    """The complete features of the window from ``pos``, sliced by one msgspec call.

    The regular-expression path costs a few Python steps per feature; a
    window of small features (100k points: 1,500 per MiB) goes ~3x faster
    in one C-level decode of ``[<the window up to its last feature end>]``.
    The cut is found by looking for how features usually meet (``},{``);
    a wrong guess (inside a string, inside a feature) cannot decode, so
    what is handed out is always exactly what the slow path finds. Anything
    unusual — no cut found, a malformed or over-deep feature, an element
    that is not an object or is larger than ``limit`` — ends the fast path
    there, and the slow path takes over from that element.
    """
    data = buf.data
    end = len(data)
    for _ in range(_CUT_ATTEMPTS):
        cut = max(data.rfind(boundary, pos, end) for boundary in _BOUNDARIES)
        if cut < 0:
            return []
        try:
            raws = _RAW_ELEMENTS.decode(b"[" + data[pos : cut + 1] + b"]")
            break
        except (msgspec.DecodeError, RecursionError):
            end = cut  # the guess was inside a feature: try the one before
    else:
        return []
    items = []
    base = buf.base
    separator = _SEPARATOR.match
    for raw in raws:
        text = bytes(raw)
        if text[:1] != b"{" or len(text) > limit:
            break
        items.append(RawItem(index, text, base + pos))
        index += 1
        m = separator(data, pos + len(text))
        if m is None:
            break
        pos = m.end()
    return items


def _match_end(pattern: re.Pattern[bytes], data: bytearray, pos: int) -> int:
    """Where a match of ``pattern`` (which may match nothing) at ``pos`` ends."""
    m = pattern.match(data, pos)
    return m.end() if m is not None else pos
