"""Coverage-guided fuzzing of the codec (atheris / libFuzzer).

``python bench/fuzz_codec.py -max_total_time=300 -rss_limit_mb=1024 -timeout=10 [CORPUS_DIR]``

Every input is converted three ways (a GeoJSON document, a text sequence,
NDJSON) with small limits and a 7-byte read size (so that every token is
cut somewhere); the only exception allowed out is
:class:`geobus.errors.DocumentError`. Any other exception, a crash of a C
extension, a run over ``-timeout`` seconds or over ``-rss_limit_mb`` is a
finding that libFuzzer reports with the input that caused it. The seed
corpus is a handful of valid and hostile documents (written to
``.data/fuzz-corpus`` when no directory is given). Needs
``pip install atheris``.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from geobus.codec import scanner as _scanner
    from geobus.codec.batches import BatchContext, BatchLimits
    from geobus.codec.convert import DocumentConverter
    from geobus.codec.limits import DocumentLimits
    from geobus.errors import DocumentError

LIMITS = DocumentLimits(
    max_features=200,
    max_feature_bytes=4096,
    max_vertices=64,
    max_depth=16,
    max_properties_bytes=1024,
    max_string_bytes=128,
    max_number_magnitude=1e15,
)
SEEDS = [
    b'{"type":"FeatureCollection","features":[{"type":"Feature","id":1,"properties":{"a":[1,'
    b'{"b":"c"}]},"geometry":{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,0]]]}}]}',
    b'{"type":"Feature","properties":null,"geometry":{"type":"GeometryCollection","geometries":'
    b'[{"type":"Point","coordinates":[1,2,3]},{"type":"LineString","coordinates":[[0,0],[1,1]]}]}}',
    b'\x1e{"type":"Point","coordinates":[1e400,NaN]}\n\x1e{"type":"MultiPoint","coordinates":[]}\n',
    b'{"type":"Feature","id":"\\ud800\\u0000","properties":{"k":1e999999},"geometry":null}\n',
    b'\xef\xbb\xbf{"features":[[[[]]],"x",12,{"type":"Feature"}],"type":"FeatureCollection"}',
]


class _Chunked(io.RawIOBase):
    """Reads at most 7 bytes at a time."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._at = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        piece = bytes(self._data[self._at : self._at + 7])
        self._at += len(piece)
        return piece


def test_one_input(data: bytes) -> None:
    """Convert ``data`` three ways; only DocumentError may escape."""
    for framing in ("json", "seq", "ndjson"):
        converter = DocumentConverter(
            _Chunked(data),  # type: ignore[arg-type]
            BatchContext(job_id="fuzz"),
            BatchLimits(max_features=4, max_bytes=2048),
            framing,  # type: ignore[arg-type]
            LIMITS,
        )
        try:
            for _ in converter:
                pass
        except DocumentError:
            pass


def main() -> None:
    """Run libFuzzer with the command-line options given."""
    args = sys.argv[:]
    if not any(not a.startswith("-") for a in args[1:]):
        corpus = Path(".data/fuzz-corpus")
        corpus.mkdir(parents=True, exist_ok=True)
        for n, seed in enumerate(SEEDS):
            (corpus / f"seed-{n}").write_bytes(seed)
        args.append(str(corpus))
    _scanner.CHUNK_BYTES = 7
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
