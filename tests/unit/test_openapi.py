"""The ingress's OpenAPI document: valid, complete, and true to the handlers' documents."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate
from starlette.routing import Route

from geobus.ingress.app import create_app
from geobus.ingress.documents import rejects_document
from geobus.ingress.openapi import document
from geobus.ingress.ports import JobRecord, RejectionRecord
from geobus.ingress.problem import problem
from geobus.jobs import job_document
from geobus.settings import Settings
from geobus.store.base import JobCounts

METHODS = {"get", "post", "put", "patch", "delete"}


def _openapi_path(starlette_path: str) -> str:
    """``/x/{id:path}`` as OpenAPI writes it: ``/x/{id}``."""
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", starlette_path)


def _routes() -> set[tuple[str, str]]:
    app = create_app(Settings.from_env({}))
    found = set()
    for route in app.routes:
        assert isinstance(route, Route), f"not a plain route: {route!r}"
        for method in route.methods or ():
            if method != "HEAD":  # Starlette adds HEAD to every GET
                found.add((_openapi_path(route.path), method.lower()))
    return found


def _described() -> set[tuple[str, str]]:
    return {
        (path, method)
        for path, item in document()["paths"].items()
        for method in item
        if method in METHODS
    }


def _conforms(instance: Any, schema_name: str) -> None:
    """Validate ``instance`` against a component schema, resolving its $refs in the document."""
    root = {**document(), "$ref": f"#/components/schemas/{schema_name}"}
    jsonschema.Draft202012Validator(
        root, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(instance)


def test_document_is_valid_openapi_3_1() -> None:
    """openapi-spec-validator accepts the document as OpenAPI 3.1."""
    assert document()["openapi"].startswith("3.1")
    validate(document())


def test_every_route_is_described_and_nothing_else() -> None:
    """Each (path, method) the Starlette app serves is in the document, and vice versa."""
    assert _routes() == _described()


def test_every_operation_has_an_id_and_documented_statuses() -> None:
    """Operations carry an operationId and only answer documented problem statuses."""
    ids = [op["operationId"] for item in document()["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    post = document()["paths"]["/v1/features"]["post"]
    assert set(post["responses"]) >= {"202", "400", "401", "413", "415", "422", "429", "503"}
    assert "Location" in post["responses"]["202"]["headers"]


def test_request_media_types_are_the_accepted_ones() -> None:
    """The POST body lists exactly the media types the ingress accepts."""
    from geobus.codec.convert import MEDIA_TYPES

    content = document()["paths"]["/v1/features"]["post"]["requestBody"]["content"]
    assert set(content) == set(MEDIA_TYPES)


def test_job_document_conforms() -> None:
    """A job document as the handlers build it, final and fresh, validates against JobDocument."""
    moment = datetime(2026, 5, 9, 7, 35, 25, tzinfo=UTC)
    fresh = JobRecord(job_id="j1", created=moment, updated=moment)
    done = JobRecord(
        job_id="j2",
        status="successful",
        created=moment,
        started=moment,
        finished=moment,
        updated=moment,
        message="ok",
        features_total=3,
        counts=JobCounts(received=3, valid=2, repaired=1, rejected=1, stored=2, adjusted={"x": 1}),
        warnings=["legacy crs"],
    )
    for job in (fresh, done):
        _conforms(job_document(job), "JobDocument")
    broken = job_document(fresh) | {"status": "finished"}
    with pytest.raises(jsonschema.ValidationError):
        _conforms(broken, "JobDocument")


def test_rejects_page_conforms() -> None:
    """A rejects page with and without location validates against RejectsPage."""
    rows = [
        RejectionRecord(0, "a", "validator", "invalid_topology", "self-intersection", "", [1, 2]),
        RejectionRecord(5, 7, "codec", "position_too_long", "4 numbers", "/geometry", []),
        RejectionRecord(9, None, "writer", "processing_failed", "refused", "", []),
    ]
    _conforms(rejects_document("j", rows, limit=2, offset=0, more=True), "RejectsPage")


def test_problem_conforms() -> None:
    """problem() builds what the Problem schema says."""
    import json

    response = problem(422, "bad", instance="/v1/features", code="invalid-crs", parameter="x")
    _conforms(json.loads(response.body), "Problem")
    assert response.media_type == "application/problem+json"


def test_job_list_conforms() -> None:
    """The admin job listing validates against JobList."""
    from geobus.ingress.documents import jobs_document

    moment = datetime(2026, 5, 9, 7, 35, 25, tzinfo=UTC)
    jobs = [JobRecord(job_id=f"j{n}", created=moment, updated=moment) for n in range(2)]
    document_ = jobs_document(jobs, limit=2, offset=0, more=True, status="accepted")
    _conforms(document_, "JobList")


def test_dead_letter_documents_conform() -> None:
    """A decoded dead letter (a feature batch with x-death) validates against DeadLetter."""
    import json

    from geobus.deadletters import show_document
    from tests.unit.test_deadletters import _dead

    deaths = [{"reason": "delivery_limit", "queue": "q", "count": 11, "time": datetime.now(UTC)}]
    message = _dead(
        {"x-geobus-reason": "error", "x-exception": "MessageError: x", "x-death": deaths}
    )
    # What the endpoint sends: the document through JSON.
    shown = json.loads(json.dumps(show_document(message, "validator"), default=str))
    _conforms(shown, "DeadLetter")
    _conforms(
        {
            "validator": {
                "count": 1,
                "groups": [{"reason": "error", "error_class": "MessageError", "count": 1}],
            }
        },
        "DeadLetterListing",
    )
    _conforms({"replayed": ["a:b:1"], "failed": [["a:b:2", "not confirmed"]]}, "ReplayReport")


def test_served_at_openapi_json() -> None:
    """GET /openapi.json answers the document as JSON (no store or broker needed)."""
    from starlette.testclient import TestClient

    client = TestClient(create_app(Settings.from_env({})))
    answer = client.get("/openapi.json")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == document()
