"""Hostile inputs against a running geobus: each gets its expected outcome, timed and measured.

``python -m bench.hostile`` starts a pipeline (ingress + one worker per stage,
PostGIS), sends every input of :func:`cases` (the giant variants: a 1 GB gzip
bomb, a 5 M-vertex feature, 10^6-digit numbers...) one after the other,
then one small job per hostile ``callback_url`` (loopback in five spellings,
the metadata address, a name mapped to 10.0.0.1 in /etc/hosts, a 302 to
loopback; see :class:`CallbackTargets`, needs root) and an allowed, signed
control, then ``countries-land-10km`` to show that the pipeline still works;
a polygon of 10^7 vertices goes first to a pipeline of its own with larger
body limits (:data:`BIG_ENV`). It writes ``bench/results/hostile.md``: per
input the HTTP answer or the job's outcome (and its callback's), the seconds
to that final outcome and the peak RSS of the ingress and of its conversion
worker during that input. It exits 1 when an input did
not get its expected outcome.

``tests/integration/test_hostile.py`` runs the same catalogue with smaller
variants (``giant=False``) and the callback cases in CI.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import socket
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

from geobus.signing import Verifier, parse_headers, parse_secret, sign

SECRET = "whsec_" + base64.b64encode(b"geobus hostile suite secret, #1!").decode()
ROTATED = "whsec_" + base64.b64encode(b"geobus hostile suite secret, #2!").decode()
STRANGER = "whsec_" + base64.b64encode(b"not a secret this ingress knows").decode()
MAX_FEATURES = 10_000
MAX_FEATURE_BYTES = 16 * 1024 * 1024
MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
# The deployment the suite runs against: signed requests, small body limits
# so that "one byte over" stays cheap, the codec's limits at their defaults
# except the feature count and feature size (so that those cases are cheap).
ENV = {
    "GEOBUS_WEBHOOK_SECRETS": f"{SECRET} {ROTATED}",
    "GEOBUS_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
    "GEOBUS_MAX_DOCUMENT_BYTES": str(MAX_DOCUMENT_BYTES),
    "GEOBUS_MAX_FEATURES": str(MAX_FEATURES),
    "GEOBUS_MAX_FEATURE_BYTES": str(MAX_FEATURE_BYTES),
    "GEOBUS_MAX_JOBS_PER_CLIENT": "1000",
}
FINAL = ("successful", "failed", "dismissed")
MB = 1024 * 1024

GOOD = (
    b'{"type":"Feature","id":"good","properties":{"name":"ok"},'
    b'"geometry":{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1],[0,0]]]}}'
)
POINT = b'{"type":"Point","coordinates":[1,2]}'

Body = Callable[[], bytes]


@dataclass(frozen=True)
class Expect:
    """The outcome an input must get."""

    status: int  # of the POST
    code: str | None = None  # problem code of a refused POST
    job: str | None = None  # final job status after a 202
    failure: str | None = None  # words of a failed job's message
    rejects: tuple[str, ...] = ()  # reasons of the rejected features, in order
    stored: int | None = None
    callback: str | None = None  # "refused" or "delivered" (the job's callback_url)
    callback_via: str | None = None  # the one listener the callback reaches ("redirector" …)


@dataclass(frozen=True)
class Case:
    """One hostile input and how to send it."""

    name: str
    body: Body
    expect: Expect
    content_type: str = "application/geo+json"
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"
    secret: str | None = SECRET  # None: unsigned
    tamper: bool = False  # flip a byte after signing
    age: int = 0  # seconds the signature's timestamp lies in the past
    chunked: bool = False  # no Content-Length
    dribble: float = 0.0  # seconds to spread the body over (slow client)
    repeat: bool = False  # send twice with one webhook-id; the 2nd answer counts
    callback_url: str | None = None  # ?callback_url= of the POST


@dataclass
class Result:
    """What one input got."""

    case: str
    status: int
    code: str | None
    job: str | None = None
    message: str = ""
    rejects: list[str] = field(default_factory=list)
    stored: int | None = None
    seconds: float = 0.0
    ingress_mb: float = 0.0
    worker_mb: float = 0.0
    problems: list[str] = field(default_factory=list)
    job_id: str | None = None
    callback: str = ""  # "refused: why", "delivered (signed)", "failed: …", "none seen"

    @property
    def outcome(self) -> str:
        """One line: the HTTP answer, or the job's end (and its callback's)."""
        if self.job is None:
            return f"{self.status} {self.code or ''}".strip()
        if self.job == "failed":
            return f"{self.status} → job failed: {self.message[:70]}"
        if self.callback:
            return f"{self.status} → job {self.job}, stored {self.stored}, callback {self.callback}"
        rejected = ", ".join(sorted(set(self.rejects))) or "none"
        return f"{self.status} → job {self.job}, stored {self.stored}, rejected: {rejected}"


# -- bodies --------------------------------------------------------------------


def collection(*features: bytes) -> bytes:
    """A FeatureCollection of raw feature texts."""
    return b'{"type":"FeatureCollection","features":[' + b",".join(features) + b"]}"


def feature(properties: bytes = b'{"n":1}', geometry: bytes = POINT, fid: bytes = b"") -> bytes:
    """A raw Feature text."""
    head = b'{"type":"Feature",' + (b'"id":' + fid + b"," if fid else b"")
    return head + b'"properties":' + properties + b',"geometry":' + geometry + b"}"


def sandwich(hostile: bytes) -> bytes:
    """The hostile feature between two good ones: the job must still succeed."""
    return collection(GOOD, hostile, GOOD)


def polygon(ring: bytes) -> bytes:
    """A Polygon geometry with one ring."""
    return b'{"type":"Polygon","coordinates":[' + ring + b"]}"


def many_vertices(n: int) -> bytes:
    """A LineString geometry of ``n`` positions."""
    return b'{"type":"LineString","coordinates":[' + b"[0,0]," * (n - 1) + b"[1,1]]}"


def deep_collection(levels: int) -> bytes:
    """GeometryCollections nested ``levels`` deep around a point."""
    opening = b'{"type":"GeometryCollection","geometries":['
    return opening * levels + POINT + b"]}" * levels


def gzip_bomb(zeros: int) -> bytes:
    """``zeros`` bytes of zeros, gzip-compressed chunk by chunk (never held whole)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(MB)
    parts = [packer.compress(block) for _ in range(zeros // MB)]
    return b"".join([*parts, packer.flush()])


def small_valid() -> bytes:
    """A normal document of two good features."""
    return collection(GOOD, GOOD)


HUGE_VERTICES = 10**7
# The limits of the pipeline the 10^7-vertex polygon is sent to: its ~60 MB
# body must get past the body and feature-size limits to meet the vertex limit.
BIG_ENV = {
    "GEOBUS_MAX_BODY_BYTES": str(128 * MB),
    "GEOBUS_MAX_DOCUMENT_BYTES": str(128 * MB),
    "GEOBUS_MAX_FEATURE_BYTES": str(96 * MB),
}


def huge_polygon_case(vertices: int = HUGE_VERTICES) -> Case:
    """A polygon of ``vertices`` positions (``[0,0]``: 6 bytes each) between two good features."""

    def body() -> bytes:
        ring = b"[" + b"[0,0]," * (vertices - 1) + b"[0,0]]"
        return sandwich(feature(geometry=polygon(ring)))

    size = (vertices * 6) // MB
    return Case(
        f"polygon with 10^{len(str(vertices)) - 1} vertices, {size} MB"
        " (over GEOBUS_MAX_VERTICES_PER_FEATURE)",
        body,
        Expect(202, job="successful", rejects=("too_many_vertices",), stored=2),
    )


# -- the catalogue ---------------------------------------------------------------


def cases(*, giant: bool) -> list[Case]:
    """Every hostile input; ``giant`` picks the full-size variants (bench only)."""
    big_string = (10 if giant else 2) * MB
    digits = 10**6 if giant else 10**5
    vertices = 5_000_000 if giant else 1_200_000
    bomb = 1024 * MB if giant else 100 * MB
    truncated = small_valid()
    over = MAX_BODY_BYTES + 1 - len(b'{"type":"FeatureCollection","features":[],"x":""}')

    def padded() -> bytes:
        return b'{"type":"FeatureCollection","features":[],"x":"' + b"p" * over + b'"}'

    ok = Expect(202, job="successful", stored=2)

    def rejected(*reasons: str) -> Expect:
        return Expect(202, job="successful", rejects=reasons, stored=2)

    def failed(words: str) -> Expect:
        return Expect(202, job="failed", failure=words)

    return [
        # -- HTTP: method, media type, encoding, signature, size -----------------
        Case("GET /v1/features", small_valid, Expect(405), method="GET"),
        Case("PUT /v1/features", small_valid, Expect(405), method="PUT"),
        Case("DELETE /v1/features", small_valid, Expect(405), method="DELETE"),
        Case("PATCH /v1/features", small_valid, Expect(405), method="PATCH"),
        Case(
            "Content-Type text/plain",
            small_valid,
            Expect(415, "unsupported-media-type"),
            content_type="text/plain",
        ),
        Case(
            "Content-Encoding br",
            small_valid,
            Expect(415, "unsupported-content-encoding"),
            headers={"Content-Encoding": "br"},
        ),
        Case("empty body", lambda: b"", Expect(400, "empty-body")),
        Case("no signature", small_valid, Expect(401, "signature-missing"), secret=None),
        Case("wrong secret", small_valid, Expect(401, "signature-invalid"), secret=STRANGER),
        Case("tampered body byte", small_valid, Expect(401, "signature-invalid"), tamper=True),
        Case("timestamp 301 s old", small_valid, Expect(401, "signature-expired"), age=301),
        Case("rotated (second) secret", small_valid, ok, secret=ROTATED),
        Case(
            "replayed webhook-id",
            small_valid,
            Expect(200, job="successful", stored=2),
            repeat=True,
        ),
        Case("body 1 byte over limit, Content-Length", padded, Expect(413, "body-too-large")),
        Case(
            "body 1 byte over limit, chunked",
            padded,
            Expect(413, "body-too-large"),
            chunked=True,
        ),
        Case(
            f"gzip bomb ({bomb // MB} MB of zeros)",
            lambda: gzip_bomb(bomb),
            Expect(413, "document-too-large"),
            headers={"Content-Encoding": "gzip"},
        ),
        Case(
            "corrupt gzip",
            lambda: gzip.compress(small_valid())[:-12] + b"garbage!",
            Expect(400, "corrupt-gzip"),
            headers={"Content-Encoding": "gzip"},
        ),
        Case("slow body (3 s, 10 pieces)", small_valid, ok, dribble=3.0),
        # -- the document as a whole ---------------------------------------------
        Case("null", lambda: b"null", failed("must be a JSON object")),
        Case("[]", lambda: b"[]", failed("must be a JSON object")),
        Case("[ x 10^6", lambda: b"[" * 10**6, failed("must be a JSON object")),
        Case(
            "UTF-16 document",
            lambda: small_valid().decode().encode("utf-16"),
            failed("must be a JSON object"),
        ),
        Case("trailing garbage", lambda: small_valid() + b" }]garbage", failed("after the end")),
        Case(
            "JSON with comments",
            lambda: b'{"type":"FeatureCollection",/* hi */"features":[' + GOOD + b"]}",
            failed("not valid JSON"),
        ),
        Case(
            "FeatureCollection without features",
            lambda: b'{"type":"FeatureCollection"}',
            failed('must have a "features" array'),
        ),
        Case(
            "features not a list",
            lambda: b'{"type":"FeatureCollection","features":{"a":1}}',
            failed('must have a "features" array'),
        ),
        *[
            Case(
                f"truncated at byte {cut}",
                lambda cut=cut: truncated[:cut],  # type: ignore[misc]
                failed("the document ends"),
            )
            for cut in (1, 30, 60, len(truncated) // 2, len(truncated) - 1)
        ],
        Case(
            f"100k features of empty geometries (limit {MAX_FEATURES})",
            lambda: collection(*[feature(geometry=b'{"type":"Point","coordinates":[]}')] * 100_000),
            failed(f"more than {MAX_FEATURES} features"),
        ),
        Case(
            f"top-level member of {(MAX_FEATURE_BYTES + MB) // MB} MB",
            lambda: (
                b'{"type":"FeatureCollection","x":"'
                + b"t" * (MAX_FEATURE_BYTES + MB)
                + b'","features":[]}'
            ),
            failed("top level"),
        ),
        Case(
            "objects nested 10^5 deep at the top level",
            lambda: (
                b'{"type":"FeatureCollection","features":[],"x":'
                + b'{"a":' * 100_000
                + b"1"
                + b"}" * 100_000
                + b"}"
            ),
            failed("nests arrays or objects"),
        ),
        # -- one feature: rejected alone, its neighbours stored --------------------
        Case(
            "NaN coordinate",
            lambda: sandwich(feature(geometry=b'{"type":"Point","coordinates":[NaN,1]}')),
            rejected("non_finite_coordinate"),
        ),
        Case(
            "Infinity in properties",
            lambda: sandwich(feature(b'{"a":Infinity}')),
            rejected("malformed_json"),
        ),
        Case(
            "1e400 coordinate",
            lambda: sandwich(feature(geometry=b'{"type":"Point","coordinates":[1e400,1]}')),
            rejected("non_finite_coordinate"),
        ),
        Case(
            "1e999999 in properties",
            lambda: sandwich(feature(b'{"a":1e999999}')),
            rejected("number_out_of_range"),
        ),
        Case(
            f"{digits}-digit integer in properties",
            lambda: sandwich(feature(b'{"a":' + b"7" * digits + b"}")),
            rejected("number_out_of_range"),
        ),
        Case(
            f"{digits}-digit integer as coordinate",
            lambda: sandwich(
                feature(geometry=b'{"type":"Point","coordinates":[' + b"7" * digits + b",1]}")
            ),
            rejected("non_finite_coordinate"),
        ),
        Case(
            "NUL byte inside a string",
            lambda: sandwich(feature(b'{"a":"x\x00y"}')),
            rejected("malformed_json"),
        ),
        Case(
            "lone surrogate \\ud800",
            lambda: sandwich(feature(b'{"a":"\\ud800"}')),
            rejected("malformed_json"),
        ),
        Case(
            "invalid UTF-8 in properties",
            lambda: sandwich(feature(b'{"a":"\xc3\x28\xff"}')),
            rejected("malformed_json"),
        ),
        Case(
            "invalid UTF-8 in id",
            lambda: sandwich(feature(fid=b'"\xff\xfe"')),
            rejected("malformed_json"),
        ),
        Case(
            "duplicate keys (last wins)",
            lambda: sandwich(feature(b'{"a":1,"a":2}', POINT + b',"geometry":' + POINT)),
            Expect(202, job="successful", stored=3),
        ),
        Case("UTF-8 BOM", lambda: b"\xef\xbb\xbf" + small_valid(), ok),
        Case(
            f"{big_string // MB} MB string in properties",
            lambda: sandwich(feature(b'{"s":"' + b"s" * big_string + b'"}')),
            rejected("properties_too_large"),
        ),
        Case(
            f"{big_string // MB} MB string as id",
            lambda: sandwich(feature(fid=b'"' + b"i" * big_string + b'"')),
            rejected("string_too_long"),
        ),
        Case(
            "10^6 tiny properties",
            lambda: sandwich(feature(b"{" + b",".join(b'"%x":0' % i for i in range(10**6)) + b"}")),
            rejected("properties_too_large"),
        ),
        Case(
            "key of 300 KB",
            lambda: sandwich(feature(b'{"' + b"k" * 300_000 + b'":1}')),
            rejected("string_too_long"),
        ),
        Case(
            f"feature with {vertices:,} vertices",
            lambda: sandwich(feature(geometry=many_vertices(vertices))),
            rejected("feature_too_large" if giant else "too_many_vertices"),
        ),
        Case(
            "ring with 2 vertices",
            lambda: sandwich(feature(geometry=polygon(b"[[0,0],[1,1]]"))),
            rejected("ring_too_short"),
        ),
        Case(
            "unclosed ring",
            lambda: sandwich(feature(geometry=polygon(b"[[0,0],[1,0],[1,1],[0,1]]"))),
            rejected("ring_not_closed"),
        ),
        Case(
            "coordinates as strings",
            lambda: sandwich(feature(geometry=b'{"type":"Point","coordinates":["1","2"]}')),
            rejected("non_numeric_coordinate"),
        ),
        Case(
            "1-element position",
            lambda: sandwich(feature(geometry=b'{"type":"Point","coordinates":[1]}')),
            rejected("position_too_short"),
        ),
        Case(
            "5-element position",
            lambda: sandwich(feature(geometry=b'{"type":"Point","coordinates":[1,2,3,4,5]}')),
            rejected("position_too_long"),
        ),
        Case(
            "arrays nested 10^5 deep as a feature",
            lambda: sandwich(b"[" * 100_000 + b"]" * 100_000),
            rejected("invalid_feature"),
        ),
        Case(
            "arrays nested 10^5 deep in properties",
            lambda: sandwich(feature(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}")),
            rejected("nested_too_deeply"),
        ),
        Case(
            "arrays nested 70 deep in properties",
            lambda: sandwich(feature(b'{"a":' + b"[" * 70 + b"]" * 70 + b"}")),
            rejected("nested_too_deeply"),
        ),
        Case(
            "objects nested 10^5 deep in properties",
            lambda: sandwich(feature(b'{"a":' * 100_000 + b"1" + b"}" * 100_000)),
            rejected("nested_too_deeply"),
        ),
        Case(
            "GeometryCollection nested 50,000 deep",
            lambda: sandwich(feature(geometry=deep_collection(50_000))),
            rejected("nested_too_deeply"),
        ),
        Case(
            "GeometryCollection nested 40 deep",
            lambda: sandwich(feature(geometry=deep_collection(40))),
            rejected("nested_too_deeply"),
        ),
        Case(
            f"feature of {(MAX_FEATURE_BYTES + MB) // MB} MB (GEOBUS_MAX_FEATURE_BYTES)",
            lambda: sandwich(feature(b'{"s":"' + b"f" * (MAX_FEATURE_BYTES + MB) + b'"}', POINT)),
            rejected("feature_too_large"),
        ),
        Case("bare Geometry", lambda: POINT, Expect(202, job="successful", stored=1)),
        Case("bare Feature", lambda: GOOD, Expect(202, job="successful", stored=1)),
    ]


# -- callbacks (SSRF) --------------------------------------------------------------

CALLBACK_SECRET = "whsec_" + base64.b64encode(b"geobus hostile callback secret!!").decode()
REDIRECTOR_HOST = "127.0.0.2"  # allow-listed: it answers 302 to the canary
RECEIVER_HOST = "127.0.0.3"  # allow-listed: the positive control
CALLBACK_ENV = {
    "GEOBUS_CALLBACK_SECRET": CALLBACK_SECRET,
    "GEOBUS_CALLBACK_ALLOW": f"{REDIRECTOR_HOST}/32,{RECEIVER_HOST}/32",
}
HOSTS = Path("/etc/hosts")
CALLBACK_WAIT_S = 20.0
"""How long after the job's end its callback may take to be refused or delivered."""

Hit = tuple[str, dict[str, str], bytes]


class _Recorder(BaseHTTPRequestHandler):
    """Records every request; answers 302 to ``server.location`` when set, else 204."""

    server: _Listener

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self.server.hits.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        if self.server.location:
            self.send_response(302)
            self.send_header("Location", self.server.location)
        else:
            self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


class _Listener(ThreadingHTTPServer):
    """An HTTP listener on one address that records what reaches it."""

    daemon_threads = True

    def __init__(self, host: str, port: int, location: str = "") -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.hits: list[Hit] = []
        self.location = location
        super().__init__((host, port), _Recorder)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self.server_address[1])

    def close(self) -> None:
        """Stop serving and release the port."""
        self.shutdown()
        self.server_close()


def _canaries() -> list[_Listener]:
    """Listeners on 127.0.0.1 and [::1] with one port (retried until both are free)."""
    for _ in range(20):
        first = _Listener("127.0.0.1", 0)
        try:
            return [first, _Listener("::1", first.port)]
        except OSError:
            first.close()
    msg = "no port free on both 127.0.0.1 and ::1"
    raise RuntimeError(msg)


@dataclass
class CallbackTargets:
    """The canary (must never be called), the redirector, the receiver and an internal name.

    ``writer_log`` returns what the pipeline's writer logged so far (set by
    whoever started the pipeline); the refusals are read from it.
    """

    canaries: list[_Listener]
    redirector: _Listener
    receiver: _Listener
    hostname: str
    writer_log: Callable[[], str] = lambda: ""

    @property
    def port(self) -> int:
        """The canary's port (on 127.0.0.1 and ::1)."""
        return self.canaries[0].port

    def canary_hits(self) -> int:
        """Requests the canary got (must stay 0)."""
        return sum(len(c.hits) for c in self.canaries)

    def hits_for(self, via: str, job_id: str) -> list[Hit]:
        """The requests listener ``via`` got carrying job ``job_id``'s document."""
        listener = {"redirector": self.redirector, "receiver": self.receiver}[via]
        return [hit for hit in list(listener.hits) if job_id.encode() in hit[2]]

    def cases(self) -> list[Case]:
        """One small valid job per hostile callback URL, and the allowed positive control."""
        p = self.port
        refused = Expect(202, job="successful", stored=2, callback="refused")
        urls = [
            ("callback http://127.0.0.1", f"http://127.0.0.1:{p}/"),
            ("callback http://[::1]", f"http://[::1]:{p}/"),
            ("callback http://[::ffff:127.0.0.1]", f"http://[::ffff:127.0.0.1]:{p}/"),
            ("callback http://169.254.169.254", "http://169.254.169.254/latest/meta-data/"),
            ("callback http://2130706433", f"http://2130706433:{p}/"),
            ("callback http://0.0.0.0", f"http://0.0.0.0:{p}/"),
            (
                f"callback to a name resolving to 10.0.0.1 ({self.hostname})",
                f"http://{self.hostname}:{p}/?token=not-for-logs",
            ),
        ]
        return [
            *[Case(name, small_valid, refused, callback_url=url) for name, url in urls],
            Case(
                "callback redirected (302) to loopback",
                small_valid,
                Expect(
                    202,
                    job="successful",
                    stored=2,
                    callback="refused",
                    callback_via="redirector",
                ),
                callback_url=f"http://{REDIRECTOR_HOST}:{self.redirector.port}/hook",
            ),
            Case(
                "callback to an allow-listed receiver (control)",
                small_valid,
                Expect(
                    202,
                    job="successful",
                    stored=2,
                    callback="delivered",
                    callback_via="receiver",
                ),
                callback_url=f"http://{RECEIVER_HOST}:{self.receiver.port}/hook",
            ),
        ]


def _add_host(name: str, address: str) -> str:
    line = f"{address} {name}  # geobus hostile suite\n"
    text = HOSTS.read_text()
    with HOSTS.open("a") as hosts:  # appended in place: /etc/hosts may be a bind mount
        hosts.write(("" if not text or text.endswith("\n") else "\n") + line)
    return line


def _remove_host(line: str) -> None:
    text = HOSTS.read_text()
    if line in text:
        with HOSTS.open("r+") as hosts:
            hosts.write(text.replace(line, ""))
            hosts.truncate()


@contextlib.contextmanager
def callback_targets() -> Iterator[CallbackTargets]:
    """Start the listeners and map a unique name to 10.0.0.1 in /etc/hosts (root); undo both."""
    canaries = _canaries()
    listeners = [*canaries]
    try:
        redirector = _Listener(REDIRECTOR_HOST, 0, location=f"http://127.0.0.1:{canaries[0].port}/")
        listeners.append(redirector)
        receiver = _Listener(RECEIVER_HOST, 0)
        listeners.append(receiver)
        hostname = f"t{uuid.uuid4().hex[:12]}.geobus.test"
        line = _add_host(hostname, "10.0.0.1")
        try:
            yield CallbackTargets(canaries, redirector, receiver, hostname)
        finally:
            _remove_host(line)
    finally:
        for listener in listeners:
            listener.close()


def callback_log(log: str, job_id: str) -> list[tuple[str, str]]:
    """(level, message) of every log line of the writer about job ``job_id``'s callback."""
    needle = f"callback for job {job_id} "
    found = []
    for line in log.splitlines():
        if needle not in line:
            continue
        try:
            record = json.loads(line)
            found.append((str(record["level"]).upper(), str(record["msg"])))
        except (ValueError, KeyError, TypeError):
            found.append(("WARNING" if "WARNING" in line else "?", line))
    return found


def _signature_problem(hit: Hit) -> str | None:
    """Why the callback's Standard Webhooks headers do not verify (None: they do)."""
    _, headers, body = hit
    try:
        verifier = Verifier(
            [parse_secret(CALLBACK_SECRET)],
            parse_headers(
                headers["webhook-id"], headers["webhook-timestamp"], headers["webhook-signature"]
            ),
        )
        verifier.update(body)
        verifier.verify(now=int(time.time()))
    except Exception as exc:  # any failure to verify is the finding
        return f"callback signature does not verify: {type(exc).__name__}: {exc}"
    return None


def watch_callback(
    case: Case, result: Result, targets: CallbackTargets, canary_before: int = 0
) -> None:
    """Wait for the job's callback to be refused or delivered; record and judge what happened.

    ``canary_before``: the canary's requests before this case was sent.
    """
    want = case.expect
    assert result.job_id is not None
    deadline = time.monotonic() + CALLBACK_WAIT_S
    lines: list[tuple[str, str]] = []
    hits: list[Hit] = []
    while time.monotonic() < deadline:
        lines = callback_log(targets.writer_log(), result.job_id)
        hits = targets.hits_for(want.callback_via, result.job_id) if want.callback_via else []
        refused = any(" refused: " in msg for _, msg in lines)
        if (want.callback == "refused" and refused) or (want.callback == "delivered" and hits):
            break
        if any(" failed (attempt " in msg for _, msg in lines):
            break
        time.sleep(0.1)
    time.sleep(0.3)  # a second refusal or a retry would show by now
    lines = callback_log(targets.writer_log(), result.job_id)
    refusals = [(level, msg) for level, msg in lines if " refused: " in msg]
    if refusals:
        result.callback = "refused: " + refusals[0][1].partition(" refused: ")[2]
    elif hits:
        result.callback = "delivered"
    elif lines:
        result.callback = lines[-1][1].partition(f"job {result.job_id} ")[2]
    else:
        result.callback = "none seen"
    problems = result.problems
    if want.callback == "refused":
        if len(refusals) != 1 or len(lines) != 1:
            problems.append(f"expected one refusal in the writer's log, got {lines}")
        elif refusals[0][0] != "WARNING":
            problems.append(f"refusal logged at {refusals[0][0]}, not WARNING")
        if case.callback_url and "not-for-logs" in targets.writer_log():
            problems.append("the callback URL's query reached the writer's log")
    if want.callback == "delivered":
        if lines:
            problems.append(f"delivered callback logged {lines}")
        if len(hits) != 1:
            problems.append(f"{len(hits)} deliveries to the receiver, expected 1")
        else:
            result.callback = "delivered, signed"
            bad = _signature_problem(hits[0])
            if bad:
                problems.append(bad)
                result.callback = "delivered, unsigned or badly signed"
    if want.callback_via == "redirector" and len(hits) != 1:
        problems.append(f"{len(hits)} POSTs reached the redirector, expected 1")
    if targets.canary_hits() != canary_before:
        problems.append(f"the canary got {targets.canary_hits() - canary_before} requests")


# -- sending and judging ----------------------------------------------------------


def _headers(case: Case, body: bytes) -> dict[str, str]:
    headers = {"Content-Type": case.content_type, **case.headers}
    if case.secret is not None:
        message_id = f"msg_{uuid.uuid4().hex}"
        timestamp = int(time.time()) - case.age
        key = parse_secret(case.secret)
        headers |= {
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(key, message_id, timestamp, [body]),
        }
    return headers


def _content(case: Case, body: bytes) -> bytes | Iterator[bytes]:
    if case.dribble:
        piece = max(1, len(body) // 10)

        def slowly() -> Iterator[bytes]:
            for start in range(0, len(body), piece):
                time.sleep(case.dribble / 10)
                yield body[start : start + piece]

        return slowly()
    if case.chunked:
        return iter([body[i : i + MB] for i in range(0, len(body), MB)])
    return body


def _problem_code(response: httpx.Response) -> str | None:
    with contextlib.suppress(ValueError):
        kind = response.json().get("type", "")
        if isinstance(kind, str) and kind != "about:blank":
            # "urn:geobus:problem:body-too-large" or ".../body-too-large"
            return kind.rsplit(":", 1)[-1].rsplit("/", 1)[-1]
    return None


def send(
    client: httpx.Client, base: str, case: Case, body: bytes
) -> tuple[Result, dict[str, Any] | None]:
    """POST (or whatever the case says) the input's ``body``; the answer and its JSON."""
    headers = _headers(case, body)
    if case.tamper:
        body = body[:-3] + bytes([body[-3] ^ 1]) + body[-2:]
    url = base + "/v1/features"
    if case.callback_url is not None:
        url += "?" + urlencode({"callback_url": case.callback_url})
    if case.repeat:
        first = client.request(case.method, url, content=body, headers=headers)
        if first.status_code != 202:
            return Result(case.name, first.status_code, _problem_code(first)), None
    try:
        response = client.request(case.method, url, content=_content(case, body), headers=headers)
    except httpx.HTTPError as exc:
        # The ingress may answer (413) and close while the body is still
        # being sent; what it answered is lost with the connection.
        return Result(case.name, 0, f"connection closed: {type(exc).__name__}"), None
    document = None
    with contextlib.suppress(ValueError):
        document = response.json()
    result = Result(case.name, response.status_code, _problem_code(response))
    if case.repeat and document is not None:
        first_id = first.json().get("jobID")
        if document.get("jobID") != first_id:
            result.problems.append(f"replay answered job {document.get('jobID')}, not {first_id}")
    return result, document


def follow(client: httpx.Client, base: str, result: Result, job_id: str, timeout: float) -> None:
    """Wait for the job's final status; record it, its message, rejects and stored count."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"{base}/v1/jobs/{job_id}").json()
        if job["status"] in FINAL or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    result.job = job["status"]
    result.message = job.get("message") or ""
    result.stored = job["counts"]["stored"]
    rejects = client.get(f"{base}/v1/jobs/{job_id}/rejects", params={"limit": 100}).json()
    result.rejects = [r["reason"] for r in rejects["rejects"]]


def judge(case: Case, result: Result) -> list[str]:
    """How the result differs from what the case expects (empty: as expected)."""
    want = case.expect
    problems = list(result.problems)
    if result.status != want.status:
        problems.append(f"status {result.status} ({result.code}), expected {want.status}")
    if want.code is not None and result.code != want.code:
        problems.append(f"problem code {result.code}, expected {want.code}")
    if want.job is not None and result.job != want.job:
        problems.append(f"job {result.job} ({result.message}), expected {want.job}")
    if want.failure is not None and want.failure not in result.message:
        problems.append(f"job message {result.message!r} lacks {want.failure!r}")
    if want.job == "successful" and result.rejects != list(want.rejects):
        problems.append(f"rejects {result.rejects}, expected {list(want.rejects)}")
    if want.stored is not None and result.stored != want.stored:
        problems.append(f"stored {result.stored}, expected {want.stored}")
    return problems


class Memory:
    """Peak RSS of the ingress and of its descendants (the conversion worker), per input.

    ``reset`` writes 5 to ``/proc/<pid>/clear_refs``, which restarts VmHWM, so
    each reading covers one input only.
    """

    def __init__(self, ingress_pid: int) -> None:
        self.pid = ingress_pid

    def _pids(self) -> list[int]:
        from bench.harness import descendants

        return descendants(self.pid)

    def reset(self) -> None:
        """Start a new peak for every process."""
        for pid in self._pids():
            with contextlib.suppress(OSError):
                Path(f"/proc/{pid}/clear_refs").write_text("5")

    def peaks(self) -> tuple[float, float]:
        """(ingress MB, largest descendant MB) since the last reset."""
        from bench.harness import peak_rss_mb

        pids = self._pids()
        children = [peak_rss_mb(pid) for pid in pids[1:]]
        return peak_rss_mb(pids[0]), max(children, default=0.0)


def run(
    client: httpx.Client,
    base: str,
    case: Case,
    memory: Memory,
    timeout: float,
    targets: CallbackTargets | None = None,
) -> Result:
    """Send one input, wait for its final outcome (and its callback's), measure, judge."""
    body = case.body()  # made before the clock starts: a 1 GB bomb takes a while
    canary_before = targets.canary_hits() if targets is not None else 0
    memory.reset()
    started = time.perf_counter()
    result, document = send(client, base, case, body)
    if result.status in (200, 202) and document is not None and "jobID" in document:
        result.job_id = document["jobID"]
        follow(client, base, result, document["jobID"], timeout)
    result.problems = judge(case, result)
    if case.expect.callback is not None:
        if targets is None or result.job_id is None:
            result.problems.append("a callback case without callback targets or a job")
        else:
            watch_callback(case, result, targets, canary_before)
    result.seconds = time.perf_counter() - started
    result.ingress_mb, result.worker_mb = memory.peaks()
    return result


def normal_dataset(client: httpx.Client, base: str, path: Path, timeout: float) -> Result:
    """Send a real dataset signed; it must succeed with every feature accounted for."""
    body = path.read_bytes()
    case = Case(f"afterwards: {path.stem}", lambda: body, Expect(202, job="successful"))
    started = time.perf_counter()
    result, document = send(client, base, case, body)
    if document is not None and "jobID" in document:
        follow(client, base, result, document["jobID"], timeout)
        job = client.get(f"{base}/v1/jobs/{document['jobID']}").json()
        counts = job["counts"]
        if counts["stored"] + counts["rejected"] != counts["received"] or not counts["stored"]:
            result.problems.append(f"counts do not add up: {counts}")
    result.seconds = time.perf_counter() - started
    result.problems += judge(case, result)
    return result


def table(results: list[Result]) -> str:
    """The Markdown table of the results."""
    rows = [
        "| # | input | outcome | s | ingress MB | worker MB | as expected |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, r in enumerate(results, 1):
        verdict = "yes" if not r.problems else "**no**: " + "; ".join(r.problems)
        outcome = r.outcome.replace("|", "\\|")
        rows.append(
            f"| {n} | {r.case} | {outcome} | {r.seconds:.2f} | {r.ingress_mb:.0f} |"
            f" {r.worker_mb:.0f} | {verdict} |"
        )
    return "\n".join(rows)


def main() -> int:
    """Run the giant catalogue against a fresh pipeline and write bench/results/hostile.md."""
    import tempfile

    from bench import datasets, harness

    results: list[Result] = []
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory() as tmp,
        harness.fresh_database() as pg_url,
        httpx.Client(timeout=600) as client,
    ):
        # The 10^7-vertex polygon first, on a pipeline of its own: its 60 MB
        # feature must pass the body and feature-size limits to reach the
        # vertex limit, which the other cases keep small.
        harness.EXTRA_ENV.update(ENV | BIG_ENV)
        with harness.pipeline(pg_url, Path(tmp) / "big") as (group, base):
            memory = Memory(group.processes["ingress"].pid)
            huge = run(client, base, huge_polygon_case(), memory, timeout=600)
            print(f"{huge.case}: {huge.outcome} ({huge.seconds:.2f} s)", flush=True)
        harness.EXTRA_ENV.clear()
        harness.EXTRA_ENV.update(ENV | CALLBACK_ENV)
        with (
            callback_targets() as targets,
            harness.pipeline(pg_url, Path(tmp) / "main") as (group, base),
        ):
            targets.writer_log = lambda: group.log("writer-1")
            memory = Memory(group.processes["ingress"].pid)
            for case in [*cases(giant=True), *targets.cases()]:
                result = run(client, base, case, memory, timeout=600, targets=targets)
                print(f"{result.case}: {result.outcome} ({result.seconds:.2f} s)", flush=True)
                results.append(result)
            results.append(huge)
            after = normal_dataset(client, base, datasets.path("countries-land-10km"), 600)
            results.append(after)
            print(f"{after.case}: {after.outcome}", flush=True)
            if targets.canary_hits():
                after.problems.append(f"the canary got {targets.canary_hits()} requests in all")
    total = time.perf_counter() - started
    failures = [r for r in results if r.problems]
    shown = (
        ENV
        | CALLBACK_ENV
        | {
            "GEOBUS_WEBHOOK_SECRETS": "(two whsec_ test secrets)",
            "GEOBUS_CALLBACK_SECRET": "(a whsec_ test secret)",
        }
    )
    out = Path(__file__).parent / "results" / "hostile.md"
    out.write_text(
        "# Hostile inputs\n\n"
        "`python -m bench.hostile`: one pipeline (ingress + one worker per stage, PostGIS),"
        " the inputs sent one after the other, the giant variants. *s*: seconds from the"
        " request to its final outcome (the HTTP answer, or the job's end; for a callback"
        " case, until the writer refused or delivered the callback, plus 0.3 s to see that"
        " nothing follows). *ingress MB*,"
        " *worker MB*: peak RSS (VmHWM, reset before each input) of the ingress process and"
        " of its largest descendant (the conversion worker). The reset restarts the peak at"
        " the current RSS, and a worker keeps memory it once used (the allocator does not"
        " hand it back), so the worker column never falls below its earlier peaks: read it"
        " as an upper bound per input.\n\n"
        f"Settings: `{json.dumps(shown)}`, the other limits at their defaults. The"
        f" 10^7-vertex polygon ran first on a pipeline of its own with `{json.dumps(BIG_ENV)}`"
        " on top (otherwise its 60 MB body would stop at the body or feature-size limit"
        " before the vertex limit).\n\n"
        "Callback cases: a small valid document with `?callback_url=`; a canary listener on"
        " 127.0.0.1 and [::1] (one port) must get no request; the name `t<hex>.geobus.test`"
        " maps to 10.0.0.1 in /etc/hosts for the run; the redirector (127.0.0.2,"
        " allow-listed) answers 302 to the canary; the control receiver (127.0.0.3,"
        " allow-listed) must get one callback whose Standard Webhooks signature verifies."
        " *as expected* also requires exactly one refusal line, at WARNING, in the writer's"
        " log per refused job.\n\n"
        f"{len(results)} inputs, {len(failures)} not as expected, {total:.0f} s in all.\n\n"
        + table(results)
        + "\n"
    )
    print(f"wrote {out}; {len(failures)} of {len(results)} not as expected")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
