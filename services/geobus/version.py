"""The installed geobus version, for ``geobus --version`` and the OpenAPI document."""

from __future__ import annotations

from importlib import metadata


def version() -> str:
    """The installed distribution's version (``0+unknown`` when geobus is not installed)."""
    try:
        return metadata.version("geobus")
    except metadata.PackageNotFoundError:
        return "0+unknown"
