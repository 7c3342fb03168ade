"""Hostile inputs against a running geobus: each gets its expected outcome, timed and measured.

``python -m bench.hostile`` starts a pipeline (ingress + one worker per stage,
PostGIS), sends every input of :func:`cases` (the giant variants: a 1 GB gzip
bomb, a 5 M-vertex feature, 10^6-digit numbers...) one after the other,
then sends ``countries-land-10km`` to show that the pipeline still works, and
writes ``bench/results/hostile.md``: per input the HTTP answer or the job's
outcome, the seconds to that final outcome and the peak RSS of the ingress
and of its conversion worker during that input. It exits 1 when an input did
not get its expected outcome.

``tests/integration/test_hostile.py`` runs the same catalogue with smaller
variants (``giant=False``) in CI.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from geobus.signing import parse_secret, sign

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

    @property
    def outcome(self) -> str:
        """One line: the HTTP answer, or the job's end."""
        if self.job is None:
            return f"{self.status} {self.code or ''}".strip()
        if self.job == "failed":
            return f"{self.status} → job failed: {self.message[:70]}"
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


def run(client: httpx.Client, base: str, case: Case, memory: Memory, timeout: float) -> Result:
    """Send one input, wait for its final outcome, measure, judge."""
    body = case.body()  # made before the clock starts: a 1 GB bomb takes a while
    memory.reset()
    started = time.perf_counter()
    result, document = send(client, base, case, body)
    if result.status in (200, 202) and document is not None and "jobID" in document:
        follow(client, base, result, document["jobID"], timeout)
    result.seconds = time.perf_counter() - started
    result.ingress_mb, result.worker_mb = memory.peaks()
    result.problems = judge(case, result)
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

    harness.EXTRA_ENV.update(ENV)
    results: list[Result] = []
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory() as tmp,
        harness.fresh_database() as pg_url,
        harness.pipeline(pg_url, Path(tmp)) as (group, base),
        httpx.Client(timeout=600) as client,
    ):
        memory = Memory(group.processes["ingress"].pid)
        for case in cases(giant=True):
            result = run(client, base, case, memory, timeout=600)
            print(f"{result.case}: {result.outcome} ({result.seconds:.2f} s)", flush=True)
            results.append(result)
        after = normal_dataset(client, base, datasets.path("countries-land-10km"), 600)
        results.append(after)
        print(f"{after.case}: {after.outcome}", flush=True)
    total = time.perf_counter() - started
    failures = [r for r in results if r.problems]
    shown = ENV | {"GEOBUS_WEBHOOK_SECRETS": "(two whsec_ test secrets)"}
    out = Path(__file__).parent / "results" / "hostile.md"
    out.write_text(
        "# Hostile inputs\n\n"
        "`python -m bench.hostile`: one pipeline (ingress + one worker per stage, PostGIS),"
        " the inputs sent one after the other, the giant variants. *s*: seconds from the"
        " request to its final outcome (the HTTP answer, or the job's end). *ingress MB*,"
        " *worker MB*: peak RSS (VmHWM, reset before each input) of the ingress process and"
        " of its largest descendant (the conversion worker). The reset restarts the peak at"
        " the current RSS, and a worker keeps memory it once used (the allocator does not"
        " hand it back), so the worker column never falls below its earlier peaks: read it"
        " as an upper bound per input.\n\n"
        f"Settings: `{json.dumps(shown)}`, the other limits at their defaults.\n\n"
        f"{len(results)} inputs, {len(failures)} not as expected, {total:.0f} s in all.\n\n"
        + table(results)
        + "\n"
    )
    print(f"wrote {out}; {len(failures)} of {len(results)} not as expected")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
