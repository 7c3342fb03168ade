"""The ``geobus`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

from geobus import dlq_commands
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


def _base_url(args: argparse.Namespace, settings: Settings) -> str:
    url: str = args.url or f"http://{settings.http_host}:{settings.http_port}"
    return url


def _send(args: argparse.Namespace, settings: Settings) -> int:
    from geobus import client

    base = _base_url(args, settings)
    params = {"source_crs": args.source_crs} if args.source_crs else {}
    if args.callback_url:
        params["callback_url"] = args.callback_url
    try:
        document, elapsed = client.send(
            base, Path(args.file), collection=args.collection, params=params
        )
        if not args.json:
            print(f"202 Accepted in {elapsed * 1000:.0f} ms: job {document['jobID']}")
        if args.wait:
            document = client.wait(base, document["jobID"])
    except (client.RequestFailedError, OSError, TimeoutError) as exc:
        print(f"geobus send: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(document))
    elif args.wait:
        _print_job(document)
    return EXIT_OK if document["status"] in ("accepted", "running", "successful") else EXIT_FAILED


def _print_job(document: dict[str, object]) -> None:
    counts = document.get("counts") or {}
    assert isinstance(counts, dict)
    print(
        f"job {document['jobID']} {document['status']} ({document.get('progress')}%):"
        f" {counts.get('received')} received, {counts.get('stored')} stored"
        f" ({counts.get('repaired')} repaired), {counts.get('rejected')} rejected"
        f" — collection {document.get('collection')}"
    )
    if document.get("message"):
        print(f"  {document['message']}")


def _jobs_show(args: argparse.Namespace, settings: Settings) -> int:
    from geobus import client

    try:
        document = client.job(_base_url(args, settings), args.job_id)
    except (client.RequestFailedError, OSError) as exc:
        print(f"geobus jobs show: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(document))
    else:
        _print_job(document)
    return EXIT_OK


def _jobs_ls(args: argparse.Namespace, settings: Settings) -> int:
    from geobus.ingress.documents import job_document
    from geobus.store import open_store

    store = open_store(settings)
    try:
        store.ensure_schema()
        jobs = [job_document(job) for job in store.list_jobs(args.limit, 0)]
    finally:
        store.close()
    if args.json:
        print(json.dumps(jobs))
    else:
        for document in jobs:
            _print_job(document)
    return EXIT_OK


def _topology(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from geobus.broker.topology import declare_from_settings, describe

    spec = asyncio.run(declare_from_settings(settings))
    print(describe(spec))
    return EXIT_OK


def _ingress(args: argparse.Namespace, settings: Settings) -> int:
    from geobus.ingress.server import serve

    serve(settings, access_log=args.access_log)
    return EXIT_OK


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio
    import logging

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.stage == "validator":
        from geobus.validator.consumer import run
    elif args.stage == "reprojector":
        from geobus.reprojector.consumer import run
    else:
        from geobus.writer.consumer import run
    asyncio.run(run(settings))
    return EXIT_OK


def _up(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from geobus.supervisor import run

    return asyncio.run(run(settings, replicas=args.replicas))


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

    up = commands.add_parser("up", help="run the ingress and every stage on this machine")
    up.add_argument("--replicas", type=int, default=1, help="processes per stage (default 1)")
    up.set_defaults(run=_up)

    ingress = commands.add_parser("ingress", help="run the HTTP ingress")
    ingress.add_argument("--access-log", action="store_true", help="log every request")
    ingress.set_defaults(run=_ingress)

    worker = commands.add_parser("worker", help="run one stage (any number may run at once)")
    worker.add_argument("stage", choices=("validator", "reprojector", "writer"))
    worker.set_defaults(run=_worker)

    topology = commands.add_parser(
        "topology", help="declare the exchanges and queues and print them"
    )
    topology.set_defaults(run=_topology)

    send = commands.add_parser("send", help="POST a GeoJSON file to the ingress")
    send.add_argument("file")
    send.add_argument("--collection", help="target table/layer (default: features)")
    send.add_argument("--source-crs", help="CRS of legacy input that is not WGS 84")
    send.add_argument("--callback-url", help="URL the job document is POSTed to at the end")
    send.add_argument("--wait", action="store_true", help="follow the job to its end")
    send.add_argument("--json", action="store_true", help="print the job document as JSON")
    send.add_argument("--url", help="ingress base URL (default from GEOBUS_HTTP_HOST/PORT)")
    send.set_defaults(run=_send)

    jobs = commands.add_parser("jobs", help="look at jobs")
    jobs_commands = jobs.add_subparsers(dest="jobs_command", required=True)
    show = jobs_commands.add_parser("show", help="one job's status document")
    show.add_argument("job_id")
    show.add_argument("--json", action="store_true")
    show.add_argument("--url", help="ingress base URL (default from GEOBUS_HTTP_HOST/PORT)")
    show.set_defaults(run=_jobs_show)
    ls = jobs_commands.add_parser("ls", help="recent jobs, newest first (reads the store)")
    ls.add_argument("--limit", type=int, default=20)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(run=_jobs_ls)
    dlq_commands.register(commands)
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
