"""The ``geobus dlq`` subcommands: argument parsing and printing around :mod:`geobus.dlq`.

Kept apart from :mod:`geobus.dlq` so that building the ``geobus`` parser does
not import the broker client, Shapely and NumPy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from geobus import exitcodes
from geobus.settings import Settings

EXIT_OK = exitcodes.OK
EXIT_FAILED = exitcodes.FAILED
EXIT_USAGE = exitcodes.USAGE
EXIT_NOT_FOUND = exitcodes.NOT_FOUND


def register(commands: Any) -> None:
    """Add ``dlq ls|show|export|replay|purge`` to the ``geobus`` subparsers ``commands``."""
    dlq = commands.add_parser("dlq", help="look at, export, replay or purge dead letters")
    sub = dlq.add_subparsers(dest="dlq_command", required=True)

    ls = sub.add_parser("ls", help="dead letters per stage, by reason and error class")
    ls.add_argument("--stage", choices=_stages())
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(run=_ls)

    show = sub.add_parser("show", help="one dead letter, decoded (ID: its AMQP message_id)")
    show.add_argument("message_id", metavar="ID")
    show.add_argument("--stage", choices=_stages())
    show.add_argument("--json", action="store_true")
    show.set_defaults(run=_show)

    export = sub.add_parser("export", help="dead-lettered features as a GeoJSON file")
    export.add_argument("--stage", choices=_stages())
    export.add_argument("--geojson", required=True, metavar="FILE")
    export.add_argument("--json", action="store_true")
    export.set_defaults(run=_export)

    replay = sub.add_parser("replay", help="republish dead letters to where they came from")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("message_id", nargs="?", metavar="ID")
    which.add_argument("--all", action="store_true")
    replay.add_argument("--stage", choices=_stages())
    replay.add_argument("--json", action="store_true")
    replay.set_defaults(run=_replay)

    purge = sub.add_parser("purge", help="delete dead letters for good")
    purge.add_argument("--stage", choices=_stages())
    purge.add_argument("--yes", action="store_true", help="really delete them")
    purge.add_argument("--json", action="store_true")
    purge.set_defaults(run=_purge)


def _stages() -> tuple[str, ...]:
    # The stage names without importing the broker package.
    return ("validator", "reprojector", "writer")


def _guarded(args: argparse.Namespace, settings: Settings, work: Any) -> int:
    # Errors (RabbitMQ unreachable: exit 3, ...) become exit codes in geobus.cli.main.
    code: int = asyncio.run(work(args, settings))
    return code


def _ls(args: argparse.Namespace, settings: Settings) -> int:
    async def work(args: argparse.Namespace, settings: Settings) -> int:
        from geobus import dlq

        listing = await dlq.list_dead_letters(settings, args.stage)
        if args.json:
            print(json.dumps(listing))
            return EXIT_OK
        for stage, entry in listing.items():
            print(f"{stage}: {entry['count']} dead letter(s)")
            for group in entry["groups"]:
                print(f"  {group['count']:>6}  {group['reason']:<18} {group['error_class']}")
        return EXIT_OK

    return _guarded(args, settings, work)


def _show(args: argparse.Namespace, settings: Settings) -> int:
    async def work(args: argparse.Namespace, settings: Settings) -> int:
        from geobus import dlq

        found = await dlq.show(settings, args.message_id, args.stage)
        if not found:
            print(f"geobus dlq show: no dead letter {args.message_id!r}", file=sys.stderr)
            return EXIT_NOT_FOUND
        if args.json:
            print(json.dumps(found[0] if len(found) == 1 else found))
            return EXIT_OK
        for document in found:
            _print_dead_letter(document)
        return EXIT_OK

    return _guarded(args, settings, work)


def _print_dead_letter(document: dict[str, Any]) -> None:
    print(f"message {document['message_id']} in the {document['stage']} DLQ")
    print(f"  job       {document['job_id']}")
    print(
        f"  reason    {document['reason']}  (attempt {document['attempt']},"
        f" replays {document['replays']})"
    )
    print(f"  error     {document['error'] or '-'}")
    envelope = document["envelope"]
    print(
        f"  from      {envelope['original_exchange']} [{envelope['original_routing_key']}]"
        f"  type {envelope['type']}"
    )
    for death in document["deaths"]:
        print(
            f"  death     {death.get('reason')} in {death.get('queue')}"
            f" x{death.get('count')} at {death.get('time')}"
        )
    if document.get("payload_error"):
        print(f"  payload   undecodable: {document['payload_error']}")
    elif document.get("payload") is not None:
        print(f"  payload   {json.dumps(document['payload'])}")
    for feature in document.get("features", []):
        geometry = feature["geometry"]
        if geometry is None:
            text = "null geometry"
        elif "problem" in geometry:
            text = f"{geometry['problem']} ({geometry['wkb_bytes']} bytes of WKB)"
        else:
            text = f"{geometry['type']}, {geometry['vertices']} vertices, bbox {geometry['bbox']}"
            if geometry["validity"] != "Valid Geometry":
                text += f", {geometry['validity']}"
            if "offending_coordinate" in geometry:
                text += f", at {geometry['offending_coordinate']}"
        ident = f" id {json.dumps(feature['id'])}" if "id" in feature else ""
        print(f"  feature   #{feature['index']}{ident}: {text}")


def _export(args: argparse.Namespace, settings: Settings) -> int:
    async def work(args: argparse.Namespace, settings: Settings) -> int:
        from geobus import dlq

        counts = await dlq.export_geojson(settings, Path(args.geojson), args.stage)
        if args.json:
            print(json.dumps(counts))
            return EXIT_OK
        print(
            f"{counts['features']} feature(s) from {counts['batches']} batch(es) written to"
            f" {args.geojson}; {counts['other_messages']} dead letter(s) without features"
        )
        return EXIT_OK

    return _guarded(args, settings, work)


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    async def work(args: argparse.Namespace, settings: Settings) -> int:
        from geobus import dlq

        report = await dlq.replay(settings, None if args.all else args.message_id, args.stage)
        if args.json:
            print(json.dumps({"replayed": report.replayed, "failed": report.failed}))
        else:
            for ident in report.replayed:
                print(f"replayed {ident}")
            for ident, error in report.failed:
                print(f"NOT replayed {ident}: {error}", file=sys.stderr)
        if not report.replayed and not report.failed and not args.all:
            print(f"geobus dlq replay: no dead letter {args.message_id!r}", file=sys.stderr)
            return EXIT_NOT_FOUND
        return EXIT_FAILED if report.failed else EXIT_OK

    return _guarded(args, settings, work)


def _purge(args: argparse.Namespace, settings: Settings) -> int:
    if not args.yes:
        print("geobus dlq purge deletes dead letters for good: add --yes", file=sys.stderr)
        return EXIT_USAGE

    async def work(args: argparse.Namespace, settings: Settings) -> int:
        from geobus import dlq

        purged = await dlq.purge(settings, args.stage)
        if args.json:
            print(json.dumps(purged))
            return EXIT_OK
        for stage, count in purged.items():
            print(f"{stage}: {count} dead letter(s) purged")
        return EXIT_OK

    return _guarded(args, settings, work)
