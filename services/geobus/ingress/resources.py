"""What the ingress's lifespan opens and every request handler shares."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from geobus.ingress.admission import Admission
from geobus.ingress.ports import JobStore, Publisher
from geobus.ingress.runner import ConversionRunner
from geobus.settings import Settings


@dataclass(frozen=True, slots=True)
class Resources:
    """What the lifespan opened, shared by every request."""

    settings: Settings
    store: JobStore
    publisher: Publisher
    runner: ConversionRunner
    admission: Admission


class InvalidParameterError(Exception):
    """A request parameter is unusable: answered with 422."""

    def __init__(self, code: str, detail: str, parameter: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.parameter = parameter


def resources_of(request: Request) -> Resources:
    """The resources the lifespan put into the request's state."""
    resources: Resources = request.state.resources
    return resources


def int_parameter(request: Request, name: str, default: int, low: int, high: int) -> int:
    """Query parameter ``name`` as an integer in [low, high]; InvalidParameterError if not."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        detail = f"{name} must be an integer {low}-{high}"
        raise InvalidParameterError("invalid-parameter", detail, name)
    return value
