"""The ``geobus`` command line: parser, --json, exit codes, progress and completion.

The HTTP commands run against a small fake ingress in a thread, so that the
exit codes are pinned without RabbitMQ or a database
(``tests/integration/test_cli.py`` runs them against the real pipeline).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from geobus import exitcodes
from geobus.cli import build_parser, main
from geobus.client import RequestFailedError
from geobus.errors import ConfigurationError, DocumentError, TransientError
from geobus.exitcodes import NotFoundError
from geobus.progress import Progress
from geobus.version import version

POINT = b'{"type":"Feature","geometry":{"type":"Point","coordinates":[1,2]},"properties":{}}'
GEOBUS = str(Path(sys.executable).parent / "geobus")


def _job(status: str, progress: int) -> dict[str, Any]:
    return {
        "jobID": "j-1",
        "status": status,
        "progress": progress,
        "collection": "features",
        "counts": {"received": 1, "valid": 1, "repaired": 0, "rejected": 0, "stored": 1},
        "message": None,
    }


class _FakeIngress(BaseHTTPRequestHandler):
    """202 for POST /v1/features; GET /v1/jobs/j-1 walks through ``states``."""

    states: ClassVar[list[tuple[str, int]]] = []
    post_status: ClassVar[int] = 202
    polls: ClassVar[int] = 0
    posted_headers: ClassVar[dict[str, str]] = {}

    def _answer(self, status: int, document: dict[str, Any], media: str) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", media)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        _FakeIngress.posted_headers = {k.lower(): v for k, v in self.headers.items()}
        if self.post_status not in (200, 202):
            problem = {"type": "about:blank", "title": "Busy", "status": self.post_status}
            self._answer(
                self.post_status, problem | {"detail": "later"}, "application/problem+json"
            )
            return
        self._answer(self.post_status, _job("accepted", 0), "application/json")

    def do_GET(self) -> None:
        if not self.path.startswith("/v1/jobs/j-1"):
            problem = {"type": "about:blank", "title": "Not Found", "status": 404, "detail": "no"}
            self._answer(404, problem, "application/problem+json")
            return
        index = min(_FakeIngress.polls, len(self.states) - 1)
        _FakeIngress.polls += 1
        self._answer(200, _job(*self.states[index]), "application/json")

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def ingress() -> Iterator[str]:
    """A fake ingress answering on a free port; its URL."""
    _FakeIngress.states = [("running", 40), ("successful", 100)]
    _FakeIngress.post_status = 202
    _FakeIngress.polls = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeIngress)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def document(tmp_path: Path) -> Path:
    """A one-feature GeoJSON file."""
    path = tmp_path / "one.geojson"
    path.write_bytes(POINT)
    return path


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("GEOBUS_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """main() configures logging for the whole process: undo it for the tests after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    httpx_level = logging.getLogger("httpx").level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(httpx_level)
    logging.captureWarnings(False)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[name] = sub
                found.update({f"{name} {k}": v for k, v in _subcommands(sub).items()})
    return found


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the installed version and exits 0."""
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"geobus {version()}"


def test_every_listing_or_showing_command_has_json() -> None:
    """Each command that lists or shows something accepts --json."""
    commands = _subcommands(build_parser())
    listing = [
        "convert",
        "send",
        "topology",
        "jobs ls",
        "jobs show",
        "dlq ls",
        "dlq show",
        "dlq export",
        "dlq replay",
        "dlq purge",
    ]
    for name in listing:
        options = {o for a in commands[name]._actions for o in a.option_strings}
        assert "--json" in options, name


def test_bad_arguments_exit_2() -> None:
    """argparse's usage errors exit 2, the documented usage code."""
    with pytest.raises(SystemExit) as exit_:
        main(["worker", "nonsense"])
    assert exit_.value.code == exitcodes.USAGE


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (httpx.ConnectError("refused"), exitcodes.UNREACHABLE),
        (httpx.ReadTimeout("slow"), exitcodes.UNREACHABLE),
        (TransientError("RabbitMQ away"), exitcodes.UNREACHABLE),
        (ConnectionRefusedError(), exitcodes.UNREACHABLE),
        (RequestFailedError(httpx.Response(404, json={})), exitcodes.NOT_FOUND),
        (RequestFailedError(httpx.Response(503, json={})), exitcodes.REFUSED),
        (RequestFailedError(httpx.Response(401, text="no")), exitcodes.REFUSED),
        (NotFoundError("no dead letter"), exitcodes.NOT_FOUND),
        (TimeoutError("job not finished"), exitcodes.TIMED_OUT),
        (ConfigurationError("bad"), exitcodes.USAGE),
        (FileNotFoundError("x.geojson"), exitcodes.USAGE),
        (DocumentError("document_not_json", "not JSON"), exitcodes.FAILED),
        (KeyboardInterrupt(), exitcodes.INTERRUPTED),
        (ValueError("a bug"), None),
    ],
)
def test_exit_code_for_each_failure(exc: BaseException, code: int | None) -> None:
    """Each kind of failure maps to its documented exit code; a bug maps to none (traceback)."""
    assert exitcodes.for_exception(exc) == code


def test_bad_setting_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad GEOBUS_* variable is a usage error."""
    monkeypatch.setenv("GEOBUS_HTTP_PORT", "eighty")
    assert main(["jobs", "show", "j-1"]) == exitcodes.USAGE


def test_missing_file_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """send of a file that does not exist is a usage error, said on stderr."""
    assert main(["send", "/nonexistent/x.geojson", "--url", "http://127.0.0.1:9"]) == 2
    assert "geobus send:" in capsys.readouterr().err


def test_unreachable_ingress_exits_3(document: Path) -> None:
    """Nothing listening at --url: exit 3."""
    with ThreadingHTTPServer(("127.0.0.1", 0), _FakeIngress) as closed:
        url = f"http://127.0.0.1:{closed.server_port}"
    assert main(["send", str(document), "--url", url]) == exitcodes.UNREACHABLE
    assert main(["jobs", "show", "j-1", "--url", url]) == exitcodes.UNREACHABLE


def test_send_wait_json_prints_one_document(
    ingress: str, document: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """send --wait --json prints exactly the final job document on stdout and exits 0."""
    assert main(["send", str(document), "--wait", "--json", "--url", ingress]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["status"] == "successful"
    assert out.count("\n") == 1


def test_send_wait_failed_job_exits_1(ingress: str, document: Path) -> None:
    """A job that ends failed: exit 1."""
    _FakeIngress.states = [("running", 10), ("failed", 10)]
    assert main(["send", str(document), "--wait", "--url", ingress]) == exitcodes.FAILED


def test_send_wait_timeout_exits_6(ingress: str, document: Path) -> None:
    """--wait --timeout ends with exit 6 while the job still runs."""
    _FakeIngress.states = [("running", 10)]
    args = ["send", str(document), "--wait", "--timeout", "0.3", "--url", ingress]
    assert main(args) == exitcodes.TIMED_OUT


def test_send_refused_exits_5(
    ingress: str, document: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An ingress answering 503 (busy): exit 5, the problem's detail on stderr."""
    _FakeIngress.post_status = 503
    assert main(["send", str(document), "--url", ingress]) == exitcodes.REFUSED
    assert "HTTP 503" in capsys.readouterr().err


def test_unknown_job_exits_4(ingress: str) -> None:
    """jobs show of an id the ingress does not know: exit 4."""
    assert main(["jobs", "show", "nope", "--url", ingress]) == exitcodes.NOT_FOUND


def test_convert_json(document: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """convert --json prints one object with the counts and exits 0."""
    assert main(["convert", str(document), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["features"] == 1
    assert result["batches"] == 1


def test_convert_of_a_bad_document_exits_1(tmp_path: Path) -> None:
    """convert of a document that is not GeoJSON: exit 1."""
    bad = tmp_path / "bad.geojson"
    bad.write_text('{"type": "Topology"}')
    assert main(["convert", str(bad)]) == exitcodes.FAILED


def test_progress_is_silent_unless_a_terminal() -> None:
    """The bar writes nothing to a stream that is not a TTY, and draws when it is."""
    quiet = io.StringIO()
    bar = Progress("upload", 100, stream=quiet)
    bar.show(50)
    bar.close()
    assert quiet.getvalue() == ""
    shown = io.StringIO()
    bar = Progress("upload", 2_000_000, in_bytes=True, stream=shown, enabled=True)
    bar.show(1_000_000, force=True)
    bar.close()
    text = shown.getvalue()
    assert text.startswith("\rupload [###############")
    assert " 50.0%" in text
    assert "1.0 MB/2.0 MB" in text
    assert text.endswith("\n")


def test_bash_completion_completes_commands_and_choices() -> None:
    """`geobus completion bash` gives a script that completes subcommands and choices."""
    script = f"""
set -e
export PATH={Path(GEOBUS).parent}:$PATH
eval "$(geobus completion bash)"
complete_line() {{
  COMP_LINE="$1"; COMP_POINT=${{#1}}
  read -ra COMP_WORDS <<< "$1"
  if [[ "$1" == *" " ]]; then COMP_WORDS+=(""); fi
  COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); COMPREPLY=()
  _python_argcomplete geobus
  echo "${{COMPREPLY[*]}}"
}}
complete_line "geobus dlq "
complete_line "geobus worker "
complete_line "geobus send --wa"
"""
    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    dlq, worker, send = done.stdout.splitlines()
    assert set(dlq.split()) == {"ls", "show", "export", "replay", "purge"}
    assert worker.split() == ["validator", "reprojector", "writer"]
    assert send.strip() == "--wait"


def test_resend_with_idempotency_key_gets_the_first_job(
    ingress: str, document: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--idempotency-key is sent as Idempotency-Key (unsigned), and the ingress's 200 for a
    known key counts as accepted and says so."""
    _FakeIngress.post_status = 200
    args = ["send", str(document), "--idempotency-key", "order-42", "--url", ingress]
    assert main(args) == exitcodes.OK
    assert _FakeIngress.posted_headers["idempotency-key"] == "order-42"
    assert capsys.readouterr().out.startswith("200 OK (sent before) in ")


def test_signed_send_uses_the_key_as_webhook_id(
    ingress: str, document: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a webhook secret, the idempotency key becomes the signed webhook-id."""
    import base64

    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    monkeypatch.setenv("GEOBUS_WEBHOOK_SECRETS", secret)
    assert main(["send", str(document), "--idempotency-key", "order-42", "--url", ingress]) == 0
    headers = _FakeIngress.posted_headers
    assert headers["webhook-id"] == "order-42"
    assert headers["webhook-signature"].startswith("v1,")
    assert "idempotency-key" not in headers


def test_topology_json_names_every_queue_with_its_arguments() -> None:
    """topology --json's document lists exchanges, and queues with arguments and bindings."""
    from geobus.broker.topology import topology
    from geobus.cli import _topology_document

    spec = topology("tp", delivery_limit=7)
    document = json.loads(json.dumps(_topology_document(spec)))
    assert document["prefix"] == "tp"
    assert {"name": "tp.features", "type": "topic", "durable": True} in document["exchanges"]
    queues = {q["name"]: q for q in document["queues"]}
    assert queues["tp.validator"]["arguments"]["x-delivery-limit"] == 7
    assert queues["tp.validator"]["arguments"]["x-queue-type"] == "quorum"
    assert {"exchange": "tp.features", "routing_key": "feature.ingested"} in queues["tp.validator"][
        "bindings"
    ]
    assert len(queues) == len(spec.queues)
