"""Convert one GeoJSON document (a stream) into feature batches.

:class:`DocumentConverter` drives the :class:`~geobus.codec.scanner.Scanner`
and the :class:`~geobus.codec.batches.BatchBuilder`, and checks the
document's top level once it has been read. It is pure: bytes in, messages
out; publishing them is the caller's business.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import BinaryIO

import msgspec

from geobus.codec.batches import BatchBuilder, BatchContext, BatchLimits, Output, Totals
from geobus.codec.crs import legacy_crs
from geobus.codec.features import GEOMETRY_TYPES
from geobus.codec.limits import DEFAULT_LIMITS, DocumentLimits, deeper_than, skeleton
from geobus.codec.scanner import Framing, RawItem, Scanner
from geobus.errors import DocumentError

MEDIA_TYPES: dict[str, Framing] = {
    "application/geo+json": "json",
    "application/json": "json",
    "application/geo+json-seq": "seq",
    "application/json-seq": "seq",
    "application/x-ndjson": "ndjson",
    "application/ndjson": "ndjson",
    "application/jsonl": "ndjson",
    "application/geo+json-l": "ndjson",
}

_SUFFIXES: dict[str, Framing] = {
    ".geojsonl": "ndjson",
    ".geojsonld": "ndjson",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".geojsons": "seq",
    ".geojsonseq": "seq",
}


class _TopLevel(msgspec.Struct):
    type: msgspec.Raw = msgspec.Raw(b"")
    crs: msgspec.Raw = msgspec.Raw(b"")


def framing_for_path(name: str, head: bytes) -> Framing:
    """Framing of a file, from its suffix, else from its first byte."""
    for suffix, framing in _SUFFIXES.items():
        if name.lower().endswith(suffix):
            return framing
    return "seq" if head.lstrip(b" \t\r\n").startswith(b"\x1e") else "json"


class DocumentConverter:
    """Iterate to get the document's batches; ``totals`` holds the counts.

    Raises :class:`~geobus.errors.DocumentError` when the document as a whole
    is unusable (not JSON, not GeoJSON at the top level); batches already
    yielded stay valid, so a caller that published them records a failed job.
    """

    def __init__(
        self,
        stream: BinaryIO,
        context: BatchContext,
        limits: BatchLimits | None = None,
        framing: Framing = "json",
        document: DocumentLimits = DEFAULT_LIMITS,
    ) -> None:
        self._stream = stream
        self._framing = framing
        self._document = document
        self._builder = BatchBuilder(context, limits or BatchLimits(), document)
        self._head_read = False
        self._crs_found = False
        # What the converter noticed about the whole document, for the job.
        self.warnings: list[str] = []

    @property
    def totals(self) -> Totals:
        """Features read, batches emitted and features rejected so far."""
        return self._builder.totals

    def __iter__(self) -> Iterator[Output]:
        scanner = Scanner(
            self._stream, self._framing, max_item_bytes=self._document.max_feature_bytes
        )
        limit = self._document.max_features
        for item in scanner:
            if not self._head_read and scanner.top.head:
                self._head_read = True
                self._read_crs(scanner.top.head)
            if item.index >= limit:
                # Nothing past the limit is read, let alone published; what
                # came before goes on like the features of a truncated document.
                yield from self._builder.flush()
                raise DocumentError(
                    "document_too_many_features",
                    f"the document has more than {limit} features (GEOBUS_MAX_FEATURES); the"
                    f" first {limit} were converted, the rest was not read: split the document",
                    item.offset,
                )
            yield from self._builder.add(item)
        if self._framing == "json":
            yield from self._top_level(scanner)
        yield from self._builder.flush()

    def _read_crs(self, members: bytes) -> None:
        """Honour a legacy top-level ``crs`` member as the source CRS, with a warning."""
        try:
            raw = bytes(msgspec.json.decode(members, type=_TopLevel).crs)
        except (msgspec.DecodeError, RecursionError):
            return  # the top-level check reports it
        if not raw or raw == b"null":
            return
        self._crs_found = True
        source = legacy_crs(raw)
        context = self._builder.context
        if context.crs != "OGC:CRS84" and source != context.crs:
            self.warnings.append(
                f'the document\'s "crs" member ({source}) was ignored: the request named'
                f" {context.crs}"
            )
            return
        self._builder.context = dataclasses.replace(context, crs=source)
        self.warnings.append(
            f'the document has a "crs" member, which RFC 7946 removed from GeoJSON; it was'
            f" honoured: positions were read as {source}, x (easting or longitude) first"
        )

    def _top_level(self, scanner: Scanner) -> Iterator[Output]:
        members = scanner.top.members
        depth = self._document.max_depth
        if (
            scanner.top.streamed_features
            and members.count(b"[") + members.count(b"{") > depth
            and deeper_than(skeleton(members), depth)
        ):
            # (A single Feature or Geometry is checked as the feature it is.)
            raise DocumentError(
                "document_too_deep",
                f"the document's top level nests arrays or objects more than {depth} levels"
                " deep (GEOBUS_MAX_NESTING_DEPTH)",
            )
        try:
            top = msgspec.json.decode(members, type=_TopLevel)
        except msgspec.DecodeError as exc:
            raise DocumentError(
                "document_not_json", f"the document is not valid JSON: {exc}"
            ) from None
        except RecursionError:
            raise DocumentError(
                "document_too_deep", "the document nests arrays or objects too deeply"
            ) from None
        raw_type = bytes(top.type)
        try:
            kind = msgspec.json.decode(raw_type) if raw_type else None
        except UnicodeDecodeError:
            # msgspec's Raw does not check UTF-8; decoding the value does.
            raise DocumentError(
                "document_not_json", 'the document\'s "type" is not UTF-8 (RFC 8259 §8.1)'
            ) from None
        if not isinstance(kind, str | None):
            # Shown as JSON text below, never used as a dict key (a list is unhashable).
            kind = raw_type[:40].decode("utf-8", "replace")
        if bytes(top.crs) not in (b"", b"null") and not self._crs_found:
            if self._builder.totals.features:
                # Batches already left in OGC:CRS84: too late to honour it.
                source = legacy_crs(bytes(top.crs))
                if source != "OGC:CRS84":
                    raise DocumentError(
                        "document_crs_too_late",
                        'the document\'s "crs" member comes after its features, which were'
                        ' read as OGC:CRS84 longitude/latitude; put it before "features" (or'
                        " better, send RFC 7946 GeoJSON in OGC:CRS84)",
                    )
            else:
                self._read_crs(members)
        if scanner.top.streamed_features:
            if kind != "FeatureCollection":
                raise DocumentError(
                    "document_not_geojson",
                    f'a document with a "features" array must have "type": "FeatureCollection",'
                    f" not {kind!r}",
                )
            return
        if kind == "FeatureCollection":
            raise DocumentError(
                "document_not_geojson", 'a FeatureCollection must have a "features" array'
            )
        if kind != "Feature" and kind not in GEOMETRY_TYPES:
            raise DocumentError(
                "document_not_geojson",
                f"the document's type {kind!r} is not a GeoJSON FeatureCollection, Feature or"
                " Geometry",
            )
        yield from self._builder.add(RawItem(index=0, text=members, offset=0))
