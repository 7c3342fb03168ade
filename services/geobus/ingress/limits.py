"""Size limits of a request body, enforced while it streams.

:class:`BodyMeter` counts what arrives: the body bytes as sent
(``GEOBUS_MAX_BODY_BYTES``) and, for ``Content-Encoding: gzip``, the bytes
the document inflates to (``GEOBUS_MAX_DOCUMENT_BYTES``). Inflating only
counts: each step produces at most :data:`INFLATE_STEP` bytes, which are
dropped at once, so a gzip bomb never inflates in memory and is cut off as
soon as its total passes the limit. The spool keeps the compressed body (the
bytes a signature covers); the document size comes from this count, never
from a second pass over the file.

Every refusal is a :class:`BodyRefusedError` carrying the HTTP status, the
problem code and a detail that names no content of the body.
"""

from __future__ import annotations

import zlib

INFLATE_STEP = 256 * 1024
"""Most bytes one inflate step produces (the meter's whole memory)."""
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # gzip header and trailer, 32 KiB window


class BodyRefusedError(Exception):
    """The body is refused: too large (413) or not what its encoding says (400)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


class BodyMeter:
    """Counts one request body against the limits; feed it every chunk in order.

    :meth:`count` is cheap (call it on the event loop); :meth:`inflate` does
    the zlib work of a gzip body (about 1 ms per 64 KiB chunk of GeoJSON,
    more for a bomb: call it in a thread). One thread at a time.
    """

    def __init__(self, encoding: str, max_body_bytes: int, max_document_bytes: int) -> None:
        self.gzip = encoding == "gzip"
        self.max_body_bytes = max_body_bytes
        self.max_document_bytes = max_document_bytes
        self.body_bytes = 0
        self._inflated = 0
        self._inflater = zlib.decompressobj(_GZIP_WBITS)
        self._member_open = False  # bytes of a gzip member were fed, its end not seen yet
        self._members = 0

    @property
    def document_bytes(self) -> int:
        """Bytes of the document once the content encoding is removed (so far)."""
        return self._inflated if self.gzip else self.body_bytes

    def check_declared(self, declared: int | None) -> None:
        """Refuse a ``Content-Length`` over the body limit before a byte is read."""
        if declared is not None and declared > self.max_body_bytes:
            raise BodyRefusedError(
                413,
                "body-too-large",
                f"Content-Length is {declared} bytes; this ingress takes at most"
                f" {self.max_body_bytes}",
            )

    def count(self, chunk: bytes) -> None:
        """Account the next chunk as sent; raise once the body passes its limit."""
        self.body_bytes += len(chunk)
        if self.body_bytes > self.max_body_bytes:
            raise BodyRefusedError(
                413,
                "body-too-large",
                f"the body passed {self.max_body_bytes} bytes, the most this ingress takes",
            )
        if not self.gzip and self.body_bytes > self.max_document_bytes:
            raise self._document_too_large()

    def inflate(self, chunk: bytes) -> None:
        """Inflate the next chunk of a gzip body, counting and dropping the output (blocking)."""
        data = chunk
        while True:
            inflater = self._inflater
            self._member_open = self._member_open or bool(data)
            try:
                produced = len(inflater.decompress(data, INFLATE_STEP))
            except zlib.error as exc:
                raise BodyRefusedError(
                    400, "corrupt-gzip", f"the gzip body cannot be decompressed: {exc}"
                ) from None
            self._inflated += produced
            if self._inflated > self.max_document_bytes:
                raise self._document_too_large()
            if inflater.eof:
                # A gzip body may hold several members, one after the other.
                self._members += 1
                self._member_open = False
                data = inflater.unused_data
                self._inflater = zlib.decompressobj(_GZIP_WBITS)
                if not data:
                    return
                continue
            data = inflater.unconsumed_tail
            # A full step may leave output inside zlib with no input left.
            if not data and produced < INFLATE_STEP:
                return

    def finish(self) -> None:
        """The body ended: refuse a gzip body cut off inside a member."""
        if self.gzip and (self._member_open or self._members == 0):
            raise BodyRefusedError(
                400, "corrupt-gzip", "the gzip body ends before its gzip stream does"
            )

    def _document_too_large(self) -> BodyRefusedError:
        return BodyRefusedError(
            413,
            "document-too-large",
            f"the document is more than {self.max_document_bytes} bytes once decoded",
        )
