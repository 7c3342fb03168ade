"""The ``geobus`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

from geobus.errors import ConfigurationError, DocumentError
from geobus.settings import Settings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _convert(args: argparse.Namespace, settings: Settings) -> int:
    from geobus.codec.batches import BatchContext, BatchLimits
    from geobus.codec.convert import DocumentConverter, framing_for_path
    from geobus.v1 import feature_pb2

    path = Path(args.file)
    with path.open("rb") as stream:
        framing = args.framing or framing_for_path(path.name, stream.read(64))
        stream.seek(0)
        context = BatchContext(
            job_id=str(uuid.uuid4()),
            source=feature_pb2.Source(uri=path.resolve().as_uri(), media_type=""),
        )
        converter = DocumentConverter(stream, context, BatchLimits.from_settings(settings), framing)
        encoded = 0
        try:
            for out in converter:
                if out.batch is not None:
                    encoded += out.batch.ByteSize()
        except DocumentError as exc:
            error = {"error": exc.code, "message": exc.message, "offset": exc.offset}
            print(json.dumps(error) if args.json else f"error: {exc.message}", file=sys.stderr)
            return EXIT_FAILED
    totals = converter.totals
    result = {
        "features": totals.features,
        "batches": totals.batches,
        "rejected": totals.rejected,
        "encoded_bytes": encoded,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{totals.features} features in {totals.batches} batches"
            f" ({encoded} bytes encoded), {totals.rejected} rejected"
        )
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every ``geobus`` command."""
    parser = argparse.ArgumentParser(
        prog="geobus", description="Heavy GeoJSON over RabbitMQ with Protobuf messages."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser(
        "convert", help="convert a GeoJSON file to feature batches and print the counts"
    )
    convert.add_argument("file", help="GeoJSON, GeoJSON text sequence or NDJSON file")
    convert.add_argument("--json", action="store_true", help="print one JSON object")
    convert.add_argument(
        "--framing", choices=("json", "seq", "ndjson"), help="override detection by file name"
    )
    convert.set_defaults(run=_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``geobus`` console script."""
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigurationError as exc:
        print(f"geobus: {exc}", file=sys.stderr)
        return EXIT_USAGE
    code: int = args.run(args, settings)
    return code


if __name__ == "__main__":
    sys.exit(main())
