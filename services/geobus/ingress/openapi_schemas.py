"""The component schemas of the ingress's OpenAPI document (:mod:`geobus.ingress.openapi`).

Each mirrors a document the handlers build (:mod:`geobus.ingress.documents`,
:mod:`geobus.ingress.problem`, :mod:`geobus.deadletters`);
``tests/unit/test_openapi.py`` validates real documents against them.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    """A reference to component schema ``name``."""
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    """``schema`` or JSON null."""
    return {"oneOf": [schema, {"type": "null"}]}


def schemas() -> dict[str, Schema]:
    """The document's ``components.schemas``."""
    link = {
        "type": "object",
        "required": ["href", "rel"],
        "properties": {
            "href": {"type": "string"},
            "rel": {"type": "string"},
            "type": {"type": "string"},
            "title": {"type": "string"},
        },
    }
    timestamp = nullable({"type": "string", "format": "date-time"})
    counts = {
        "type": "object",
        "required": ["received", "valid", "repaired", "rejected", "stored", "adjusted"],
        "properties": {
            "received": {"type": "integer", "minimum": 0},
            "valid": {"type": "integer", "minimum": 0},
            "repaired": {"type": "integer", "minimum": 0},
            "rejected": {"type": "integer", "minimum": 0},
            "stored": {"type": "integer", "minimum": 0},
            "adjusted": {
                "type": "object",
                "description": "Stored features per adjustment kind (antimeridian_cut, ...).",
                "additionalProperties": {"type": "integer", "minimum": 0},
            },
        },
    }
    job = {
        "type": "object",
        "description": "OGC API - Processes statusInfo, with geobus's collection and counts.",
        "required": [
            "jobID",
            "processID",
            "type",
            "status",
            "progress",
            "created",
            "updated",
            "collection",
            "counts",
            "links",
        ],
        "properties": {
            "jobID": {"type": "string"},
            "processID": {"const": "ingest"},
            "type": {"const": "process"},
            "status": {
                "type": "string",
                "enum": ["accepted", "running", "successful", "failed", "dismissed"],
            },
            "message": nullable({"type": "string"}),
            "code": {
                **nullable({"type": "string"}),
                "description": "Why a failed job failed (document_not_json, ...); null otherwise.",
            },
            "progress": {"type": "integer", "minimum": 0, "maximum": 100},
            "created": timestamp,
            "started": timestamp,
            "finished": timestamp,
            "updated": timestamp,
            "collection": {"type": "string"},
            "precision": {
                **nullable({"type": "integer", "minimum": 0, "maximum": 15}),
                "description": "The job's precision parameter; null when it gave none.",
            },
            "warnings": {"type": "array", "items": {"type": "string"}},
            "counts": ref("JobCounts"),
            "links": {"type": "array", "items": ref("Link")},
        },
    }
    feature_id = {"oneOf": [{"type": "string"}, {"type": "number"}, {"type": "null"}]}
    reject = {
        "type": "object",
        "required": ["index", "id", "stage", "reason", "message", "location"],
        "properties": {
            "index": {"type": "integer", "minimum": 0, "description": "Index in the document."},
            "id": feature_id,
            "stage": {"type": "string"},
            "reason": {"type": "string", "description": "A RejectReason code."},
            "message": {"type": "string"},
            "location": {
                "type": "object",
                "required": ["pointer", "coordinate"],
                "properties": {
                    "pointer": nullable({"type": "string"}),
                    "coordinate": nullable({"type": "array", "items": {"type": "number"}}),
                },
            },
        },
    }
    rejects = {
        "type": "object",
        "required": ["jobID", "rejects", "links"],
        "properties": {
            "jobID": {"type": "string"},
            "rejects": {"type": "array", "items": ref("Reject")},
            "links": {
                "type": "array",
                "items": ref("Link"),
                "description": "self, up (the job) and next when there is a next page.",
            },
        },
    }
    problem = {
        "type": "object",
        "description": "RFC 9457 problem details.",
        "required": ["type", "title", "status", "detail", "instance"],
        "properties": {
            "type": {
                "type": "string",
                "description": "urn:geobus:problem:<code>, or about:blank for a plain HTTP error.",
            },
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string"},
            "instance": {"type": "string"},
            "parameter": {"type": "string", "description": "The unusable parameter (422)."},
        },
    }
    return {
        **_admin_schemas(),
        "Link": link,
        "JobCounts": counts,
        "JobDocument": job,
        "Reject": reject,
        "RejectsPage": rejects,
        "Problem": problem,
        "GeoJSON": _geojson(),
        "Status": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"type": "string"}},
        },
    }


def _admin_schemas() -> dict[str, Schema]:
    group = {
        "type": "object",
        "required": ["reason", "error_class", "count"],
        "properties": {
            "reason": {"type": "string"},
            "error_class": {"type": "string"},
            "count": {"type": "integer", "minimum": 1},
        },
    }
    dead_letter = {
        "type": "object",
        "description": "One dead letter decoded (what `geobus dlq show --json` prints).",
        "required": [
            "stage",
            "message_id",
            "job_id",
            "reason",
            "error",
            "error_class",
            "attempt",
            "replays",
            "envelope",
            "headers",
            "deaths",
            "body_bytes",
            "payload",
        ],
        "properties": {
            "stage": {"type": "string"},
            "message_id": {"type": "string"},
            "job_id": {"type": "string"},
            "reason": {"type": "string"},
            "error": nullable({"type": "string"}),
            "error_class": {"type": "string"},
            "attempt": {"type": "integer"},
            "replays": {"type": "integer"},
            "envelope": {"type": "object"},
            "headers": {"type": "object"},
            "deaths": {"type": "array", "items": {"type": "object"}},
            "body_bytes": {"type": "integer", "minimum": 0},
            "payload": nullable({"type": "object"}),
            "payload_error": {"type": "string"},
            "features": {
                "type": "array",
                "items": {"type": "object"},
                "description": "Per feature: index, id, geometry summary and offending point.",
            },
        },
    }
    return {
        "JobList": {
            "type": "object",
            "description": "OGC API - Processes jobList, newest first; next linked if any.",
            "required": ["jobs", "links"],
            "properties": {
                "jobs": {"type": "array", "items": ref("JobDocument")},
                "links": {"type": "array", "items": ref("Link")},
            },
        },
        "DeadLetterListing": {
            "type": "object",
            "description": "Per stage (validator, reprojector, writer): count and groups.",
            "additionalProperties": {
                "type": "object",
                "required": ["count", "groups"],
                "properties": {
                    "count": {"type": "integer", "minimum": 0},
                    "groups": {"type": "array", "items": group},
                },
            },
        },
        "DeadLetter": dead_letter,
        "ReplayReport": {
            "type": "object",
            "required": ["replayed", "failed"],
            "properties": {
                "replayed": {"type": "array", "items": {"type": "string"}},
                "failed": {
                    "type": "array",
                    "items": {
                        "type": "array",
                        "prefixItems": [{"type": "string"}, {"type": "string"}],
                        "description": "[message id, error]",
                    },
                },
            },
        },
    }


def _geojson() -> Schema:
    # Deliberately loose: the ingress does not parse on the request path. A
    # document that is not GeoJSON is accepted (202) and fails as a job.
    geometry_types = [
        "Point",
        "MultiPoint",
        "LineString",
        "MultiLineString",
        "Polygon",
        "MultiPolygon",
        "GeometryCollection",
    ]
    feature = {
        "type": "object",
        "required": ["type", "geometry", "properties"],
        "properties": {
            "type": {"const": "Feature"},
            "geometry": nullable({"type": "object"}),
            "properties": nullable({"type": "object"}),
        },
    }
    return {
        "type": "object",
        "description": "An RFC 7946 FeatureCollection, Feature or geometry.",
        "required": ["type"],
        "properties": {
            "type": {"enum": ["FeatureCollection", "Feature", *geometry_types]},
            "features": {"type": "array", "items": feature},
        },
    }
