"""The ingress's OpenAPI 3.1 description, served at ``/openapi.json``.

Written by hand next to the handlers rather than derived from them: the
handlers stream bodies and answer problem documents that no framework
introspection would see. ``tests/unit/test_openapi.py`` validates the
document and checks that it names exactly the application's routes, and
``tests/integration/test_schemathesis.py`` checks the running ingress
against it.
"""

from __future__ import annotations

import functools
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from geobus.codec.convert import MEDIA_TYPES
from geobus.ingress.openapi_schemas import Schema, ref, schemas
from geobus.ingress.problem import MEDIA_TYPE as PROBLEM
from geobus.version import version

JSON = "application/json"

# Media types whose body is one JSON document (the others are sequences of them).
_DOCUMENT_TYPES = ("application/geo+json", "application/json")

_REASONS = {
    400: (
        "The body was empty, not received completely, or not valid gzip; or the"
        " Idempotency-Key is not 1-256 printable ASCII characters."
    ),
    401: "Not authenticated: a bad, missing or stale signature, or a missing or wrong token.",
    403: "The admin API is disabled (GEOBUS_ADMIN_TOKEN is not set).",
    404: "Nothing is known under this id.",
    408: "No part of the body arrived for GEOBUS_BODY_IDLE_TIMEOUT seconds; nothing was kept.",
    413: "The body is larger than the ingress accepts.",
    415: "The Content-Type or Content-Encoding is not accepted (see Accept-Post).",
    422: "A query parameter is unusable; `parameter` names it.",
    429: "This client has too many jobs not yet converted; retry after Retry-After seconds.",
    501: "The store cannot list jobs.",
    502: "The broker did not take the replay; what failed is still dead-lettered.",
    503: (
        "The ingress cannot take work now (broker blocked, queues full, spool full,"
        " shutting down, a dependency away); retry after Retry-After seconds."
    ),
}
_RETRY = {429, 503}


def _problem(status: int) -> Schema:
    response: Schema = {
        "description": _REASONS[status],
        "content": {PROBLEM: {"schema": ref("Problem")}},
    }
    if status in _RETRY:
        response["headers"] = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
    if status == 401:
        response["headers"] = {"WWW-Authenticate": {"$ref": "#/components/headers/Authenticate"}}
    return response


def _problems(*statuses: int) -> dict[str, Schema]:
    return {str(status): _problem(status) for status in statuses}


def _ok(schema_name: str, description: str) -> Schema:
    return {"description": description, "content": {JSON: {"schema": ref(schema_name)}}}


def _post_features() -> Schema:
    text_types = [media for media in MEDIA_TYPES if media not in _DOCUMENT_TYPES]
    content: Schema = {media: {"schema": ref("GeoJSON")} for media in _DOCUMENT_TYPES}
    for media in text_types:
        content[media] = {
            "schema": {
                "type": "string",
                "description": "GeoJSON text sequence (RFC 8142) or newline-delimited GeoJSON.",
            }
        }
    header = "#/components/parameters/"
    return {
        "operationId": "postFeatures",
        "summary": "Submit a GeoJSON document; processed asynchronously.",
        "description": (
            "The body is streamed to the spool and fsynced before the answer. Refused before"
            " a byte of the body is read with 503 (broker blocked, queues full, spool full,"
            " shutting down), 429 (too many jobs of this client) or 413 (larger than the"
            " spool). With GEOBUS_WEBHOOK_SECRETS set, every request must carry valid"
            " Standard Webhooks headers; a webhook-id (or Idempotency-Key) seen before"
            " answers the existing job."
        ),
        "parameters": [
            {"$ref": header + name}
            for name in (
                "Collection",
                "SourceCrs",
                "CallbackUrl",
                "Precision",
                "ContentEncoding",
                "WebhookId",
                "WebhookTimestamp",
                "WebhookSignature",
                "IdempotencyKey",
                "Traceparent",
            )
        ],
        "requestBody": {"required": True, "content": content},
        "responses": {
            "200": {
                "description": (
                    "A retry: the webhook-id or Idempotency-Key was accepted before; the"
                    " first job answers. The retry's body is still read and verified (a"
                    " forged retry is 401), then deleted: nothing new is kept."
                ),
                "headers": {
                    "Location": {
                        "description": "The first job's status document.",
                        "schema": {"type": "string"},
                    },
                    "Idempotent-Replayed": {"schema": {"const": "true"}},
                },
                "content": {JSON: {"schema": ref("JobDocument")}},
            },
            "202": {
                "description": "Accepted: spooled, the job recorded; conversion follows.",
                "headers": {
                    "Location": {
                        "description": "The job's status document, /v1/jobs/{id}.",
                        "schema": {"type": "string"},
                    }
                },
                "content": {JSON: {"schema": ref("JobDocument")}},
            },
            **_problems(400, 401, 408, 413, 415, 422, 429, 503),
        },
    }


def _parameters() -> dict[str, Schema]:
    def query(name: str, description: str, schema: Schema) -> Schema:
        return {"name": name, "in": "query", "description": description, "schema": schema}

    def header(name: str, description: str, schema: Schema) -> Schema:
        return {"name": name, "in": "header", "description": description, "schema": schema}

    return {
        "JobId": {
            "name": "job_id",
            "in": "path",
            "required": True,
            "description": "The job id from the 202's Location.",
            "schema": {"type": "string"},
        },
        "Collection": query(
            "collection",
            "Target table or layer (default features).",
            {"type": "string", "pattern": "^[a-z_][a-z0-9_]{0,62}$"},
        ),
        "SourceCrs": query(
            "source_crs", "CRS of legacy input that is not WGS 84 (EPSG:…).", {"type": "string"}
        ),
        "CallbackUrl": query(
            "callback_url",
            "http(s) URL the final job document is POSTed to (signed when"
            " GEOBUS_CALLBACK_SECRET is set).",
            {"type": "string", "format": "uri"},
        ),
        "Precision": query(
            "precision",
            "Decimal digits the stored coordinates are snapped to (default GEOBUS_PRECISION).",
            {"type": "integer", "minimum": 0, "maximum": 15},
        ),
        "Limit": query("limit", "Page size.", {"type": "integer", "minimum": 1, "maximum": 1000}),
        "JobStatus": query(
            "status",
            "Only jobs in this status.",
            {"enum": ["accepted", "running", "successful", "failed", "dismissed"]},
        ),
        "Stage": query(
            "stage",
            "Only this stage's dead-letter queue.",
            {"enum": ["validator", "reprojector", "writer"]},
        ),
        "MessageId": {
            "name": "message_id",
            "in": "path",
            "required": True,
            "description": "The dead letter's AMQP message_id (a slash sent as %2F).",
            "schema": {"type": "string"},
        },
        "Offset": query("offset", "Items to skip.", {"type": "integer", "minimum": 0}),
        "ContentEncoding": header(
            "Content-Encoding", "gzip bodies are accepted.", {"enum": ["gzip", "identity"]}
        ),
        "WebhookId": header(
            "webhook-id",
            "Standard Webhooks message id; a repeated id answers the existing job.",
            {"type": "string", "maxLength": 256},
        ),
        "WebhookTimestamp": header(
            "webhook-timestamp",
            "Unix seconds; refused when more than 5 minutes away from the server's clock.",
            {"type": "string", "pattern": "^[0-9]+$"},
        ),
        "WebhookSignature": header(
            "webhook-signature",
            'Space-separated "v1,<base64 HMAC-SHA256 of {id}.{timestamp}.{body}>".',
            {"type": "string"},
        ),
        "IdempotencyKey": header(
            "Idempotency-Key",
            "For unsigned deployments: a repeated key answers the existing job.",
            {"type": "string", "maxLength": 256},
        ),
        "Traceparent": header(
            "traceparent",
            "W3C trace context; the job's messages carry it to the writer.",
            {"type": "string"},
        ),
    }


def _paths() -> dict[str, Schema]:
    job_id = {"$ref": "#/components/parameters/JobId"}
    paths: dict[str, Schema] = {
        "/v1/features": {"post": _post_features()},
        "/v1/jobs/{job_id}": {
            "get": {
                "operationId": "getJob",
                "summary": "A job's status document.",
                "parameters": [job_id],
                "responses": {
                    "200": _ok("JobDocument", "The job."),
                    "404": _problem(404),
                    "503": _problem(503),
                },
            }
        },
        "/v1/jobs/{job_id}/rejects": {
            "get": {
                "operationId": "getRejects",
                "summary": "One page of the job's rejected features, in document order.",
                "parameters": [
                    job_id,
                    {"$ref": "#/components/parameters/Limit"},
                    {"$ref": "#/components/parameters/Offset"},
                ],
                "responses": {
                    "200": _ok("RejectsPage", "The page."),
                    "404": _problem(404),
                    "422": _problem(422),
                    "503": _problem(503),
                },
            }
        },
        **_admin_paths(),
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics of this ingress process.",
                "responses": {
                    "200": {
                        "description": "The Prometheus text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Alive: answers as long as the process serves HTTP.",
                "responses": {"200": _ok("Status", '{"status": "ok"}')},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Ready: broker connection open, store answers, not shutting down.",
                "responses": {"200": _ok("Status", '{"status": "ready"}'), "503": _problem(503)},
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": {JSON: {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    }
    return paths


def _admin_paths() -> dict[str, Schema]:
    admin: list[dict[str, list[str]]] = [{"adminToken": []}]
    parameter = "#/components/parameters/"
    stage = {"$ref": parameter + "Stage"}
    message_id = {"$ref": parameter + "MessageId"}
    one_or_more = {"oneOf": [ref("DeadLetter"), {"type": "array", "items": ref("DeadLetter")}]}
    return {
        "/v1/jobs": {
            "get": {
                "operationId": "listJobs",
                "summary": "Jobs, newest first, one page (admin).",
                "security": admin,
                "parameters": [
                    {"$ref": parameter + "Limit"},
                    {"$ref": parameter + "Offset"},
                    {"$ref": parameter + "JobStatus"},
                ],
                "responses": {
                    "200": _ok("JobList", "The page."),
                    **_problems(401, 403, 422, 501, 503),
                },
            }
        },
        "/v1/deadletters": {
            "get": {
                "operationId": "listDeadLetters",
                "summary": "Dead letters per stage, counted by reason and error class (admin).",
                "security": admin,
                "parameters": [stage],
                "responses": {
                    "200": _ok("DeadLetterListing", "Counts per stage."),
                    **_problems(401, 403, 422, 503),
                },
            }
        },
        "/v1/deadletters/{message_id}": {
            "get": {
                "operationId": "showDeadLetter",
                "summary": "One dead letter decoded; an array if several share the id (admin).",
                "security": admin,
                "parameters": [message_id, stage],
                "responses": {
                    "200": {
                        "description": "The dead letter.",
                        "content": {JSON: {"schema": one_or_more}},
                    },
                    **_problems(401, 403, 404, 422, 503),
                },
            }
        },
        "/v1/deadletters/{message_id}/replay": {
            "post": {
                "operationId": "replayDeadLetter",
                "summary": "Republish to where it came from, with confirms (admin).",
                "security": admin,
                "parameters": [message_id, stage],
                "responses": {
                    "200": _ok("ReplayReport", "Replayed; removed from the DLQ after the confirm."),
                    **_problems(401, 403, 404, 422, 502, 503),
                },
            }
        },
    }


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (built once; callers must not modify it)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "geobus ingress",
            "version": version(),
            "description": (
                "Heavy GeoJSON in, 202 Accepted at once, processed asynchronously."
                " Every error is an RFC 9457 problem document (application/problem+json);"
                " a method a path does not serve is answered 405 with Allow. Every"
                " response carries a W3C traceparent header."
            ),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "paths": _paths(),
        "components": {
            "schemas": schemas(),
            "parameters": _parameters(),
            "headers": {
                "RetryAfter": {
                    "description": "Seconds to wait before retrying.",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                },
                "Authenticate": {
                    "description": "Bearer (admin endpoints) or Webhook-Signature (POST).",
                    "schema": {"type": "string"},
                },
            },
            "securitySchemes": {
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Authorization: Bearer <GEOBUS_ADMIN_TOKEN>.",
                }
            },
        },
    }


async def get_openapi(request: Request) -> Response:
    """``GET /openapi.json``."""
    return JSONResponse(document())
