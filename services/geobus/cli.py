"""The ``geobus`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from geobus import dlq_commands, exitcodes, logs
from geobus.errors import ConfigurationError, DocumentError
from geobus.settings import Settings

if TYPE_CHECKING:
    from geobus.broker.topology import Topology

# The exit codes scripts rely on: see geobus.exitcodes (and the README).
EXIT_OK = exitcodes.OK
EXIT_FAILED = exitcodes.FAILED
EXIT_USAGE = exitcodes.USAGE


def _convert(args: argparse.Namespace, settings: Settings) -> int:
    from geobus.codec.batches import BatchContext, BatchLimits
    from geobus.codec.convert import DocumentConverter, framing_for_path
    from geobus.codec.limits import DocumentLimits
    from geobus.progress import Progress
    from geobus.v1 import feature_pb2

    path = Path(args.file)
    with path.open("rb") as stream:
        progress = Progress(
            f"convert {path.name}", os.fstat(stream.fileno()).st_size, in_bytes=True
        )
        framing = args.framing or framing_for_path(path.name, stream.read(64))
        stream.seek(0)
        context = BatchContext(
            job_id=str(uuid.uuid4()),
            source=feature_pb2.Source(uri=path.resolve().as_uri(), media_type=""),
        )
        converter = DocumentConverter(
            stream,
            context,
            BatchLimits.from_settings(settings),
            framing,
            DocumentLimits.from_settings(settings),
        )
        encoded = 0
        try:
            for out in converter:
                if out.batch is not None:
                    encoded += out.batch.ByteSize()
                # Where the converter's reads got to: close enough for a bar.
                progress.show(stream.tell(), f"{converter.totals.features} features")
        except DocumentError as exc:
            progress.close()
            error = {"error": exc.code, "message": exc.message, "offset": exc.offset}
            print(json.dumps(error) if args.json else f"error: {exc.message}", file=sys.stderr)
            return EXIT_FAILED
        progress.close()
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
    # Errors (unreachable, refused, timed out) become exit codes in main().
    secret = (
        Path(args.secret_file).read_text().strip()
        if args.secret_file
        else next(iter(settings.webhook_secrets), None)
    )
    sent = client.send(
        base,
        Path(args.file),
        collection=args.collection,
        params=params,
        secret=secret,
        idempotency_key=args.idempotency_key,
    )
    document = sent.document
    if not args.json:
        answer = "200 OK (sent before)" if sent.replayed else "202 Accepted"
        print(f"{answer} in {sent.seconds * 1000:.0f} ms: job {document['jobID']}", flush=True)
    if args.wait:
        document = client.wait(base, document["jobID"], timeout_s=args.timeout)
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

    document = client.job(_base_url(args, settings), args.job_id)
    if args.json:
        print(json.dumps(document))
    else:
        _print_job(document)
    return EXIT_OK


def _jobs_ls(args: argparse.Namespace, settings: Settings) -> int:
    from geobus.jobs import job_document
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

    from geobus.broker import permissions
    from geobus.broker.topology import declare_from_settings, describe, from_settings

    if args.print_permissions or args.rabbitmqctl:
        # Pure: nothing is declared, no broker is needed.
        grants = permissions.grants(
            from_settings(settings),
            args.vhost or permissions.vhost_of(settings.amqp_url),
            ingress_admin=args.ingress_admin,
        )
        if args.rabbitmqctl:
            print(permissions.shell_script(grants), end="")
        elif args.json:
            print(permissions.to_json(grants))
        else:
            print(permissions.describe(grants), end="")
        return EXIT_OK
    # Always declared, whatever GEOBUS_DECLARE_TOPOLOGY says: this is the
    # admin's command that the least-privilege services rely on. (Errors
    # become exit codes in main().)
    spec = asyncio.run(declare_from_settings(settings, force=True))
    print(json.dumps(_topology_document(spec)) if args.json else describe(spec))
    return EXIT_OK


def _topology_document(spec: Topology) -> dict[str, object]:
    """``geobus topology --json``: what was declared, as plain JSON."""
    return {
        "prefix": spec.prefix,
        "exchanges": [
            {"name": e.name, "type": e.type.value, "durable": e.durable} for e in spec.exchanges
        ],
        "queues": [
            {
                "name": q.name,
                "durable": q.durable,
                "arguments": q.argument_table,
                "bindings": [
                    {"exchange": b.exchange, "routing_key": b.routing_key}
                    for b in spec.bindings
                    if b.queue == q.name
                ],
            }
            for q in spec.queues
        ],
    }


def _ingress(args: argparse.Namespace, settings: Settings) -> int:
    from geobus.ingress.server import serve

    serve(settings, access_log=args.access_log)
    return EXIT_OK


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from geobus import metrics
    from geobus.workerpool import lower_priority

    # Batch work, below the ingress's priority (its event loop answers the
    # 202s); first, so that every thread and worker process started from
    # here on inherits it. Not in run_stage: tests run stages in-process.
    lower_priority(settings.batch_niceness)
    if settings.metrics_port:
        metrics.serve(settings.http_host, settings.metrics_port)
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

    from geobus.ingress.webhooks import check_exposure
    from geobus.supervisor import run

    check_exposure(settings)  # fail here, not in a child restarted again and again
    return asyncio.run(run(settings, replicas=args.replicas, env_dir=args.env_dir))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every ``geobus`` command."""
    from geobus.version import version

    parser = argparse.ArgumentParser(
        prog="geobus",
        description="Heavy GeoJSON over RabbitMQ with Protobuf messages.",
        epilog="Exit codes: " + "; ".join(f"{code} {meaning}" for code, meaning in exitcodes.TABLE),
    )
    parser.add_argument("--version", action="version", version=f"geobus {version()}")
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
    up.add_argument(
        "--env-dir",
        type=Path,
        help="each service's processes also get the variables of DIR/<service>.env"
        " (e.g. its own RabbitMQ user, from scripts/rabbitmq-users)",
    )
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
    topology.add_argument(
        "--print-permissions",
        action="store_true",
        help="print each service's RabbitMQ user and permissions instead (declares nothing)",
    )
    topology.add_argument(
        "--rabbitmqctl",
        action="store_true",
        help="print a shell script of rabbitmqctl commands creating those users"
        " (passwords from GEOBUS_PASSWORD_<SERVICE>)",
    )
    topology.add_argument(
        "--json", action="store_true", help="the topology (or the permissions) as JSON"
    )
    topology.add_argument("--vhost", help="vhost of the permissions (default: GEOBUS_AMQP_URL's)")
    topology.add_argument(
        "--ingress-admin",
        action="store_true",
        help="the ingress serves the admin dead-letter endpoints: give it the operator's rights",
    )
    topology.set_defaults(run=_topology)

    send = commands.add_parser("send", help="POST a GeoJSON file to the ingress")
    send.add_argument("file")
    send.add_argument("--collection", help="target table/layer (default: features)")
    send.add_argument("--source-crs", help="CRS of legacy input that is not WGS 84")
    send.add_argument("--callback-url", help="URL the job document is POSTed to at the end")
    send.add_argument("--wait", action="store_true", help="follow the job to its end")
    send.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="the same KEY on a resend gets the first job instead of a second one"
        " (the webhook-id when signing)",
    )
    send.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="with --wait: give up (exit 6) after this long (default 3600)",
    )
    send.add_argument("--json", action="store_true", help="print the job document as JSON")
    send.add_argument("--url", help="ingress base URL (default from GEOBUS_HTTP_HOST/PORT)")
    send.add_argument(
        "--secret-file",
        help="file holding the whsec_… secret to sign with (default: the first of"
        " GEOBUS_WEBHOOK_SECRETS; a file, so the secret is not in the process list)",
    )
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

    completion = commands.add_parser(
        "completion",
        help="print the shell completion script",
        description='Enable with: eval "$(geobus completion bash)" (in ~/.bashrc; zsh: ~/.zshrc)',
    )
    completion.add_argument("shell", choices=("bash", "zsh", "fish"))
    completion.set_defaults(run=_completion, needs_settings=False)
    return parser


def _completion(args: argparse.Namespace, settings: Settings | None) -> int:
    from argcomplete.shell_integration import shellcode

    # The script calls `geobus` back with _ARGCOMPLETE set; main() answers.
    print(shellcode(["geobus"], shell=args.shell), end="")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``geobus`` console script; returns the exit code (geobus.exitcodes)."""
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:
        # A shell asks for completions (`geobus completion`): answer and exit.
        import argcomplete

        # Options are offered once a "-" is typed, not mixed into every list.
        argcomplete.autocomplete(parser, always_complete_options=False)
    args = parser.parse_args(argv)
    if not getattr(args, "needs_settings", True):
        code: int = args.run(args, None)
        return code
    try:
        settings = Settings.from_env()
    except ConfigurationError as exc:
        print(f"geobus: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # Every command logs alike; `geobus up`'s children read the same variables.
    logs.configure(settings.log_level, settings.log_format)
    # httpx logs every request at INFO: a line per poll of `send --wait`.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.root.level))
    try:
        code = args.run(args, settings)
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED
    except Exception as exc:
        known = exitcodes.for_exception(exc)
        if known is None:
            raise  # a bug: the traceback says where (exit status 1)
        words = (args.command, getattr(args, "jobs_command", ""), getattr(args, "dlq_command", ""))
        print(f"geobus {' '.join(w for w in words if w)}: {exc}", file=sys.stderr)
        return known
    return code


if __name__ == "__main__":
    sys.exit(main())
