"""Settings come from GEOBUS_* variables, fail fast, and match the README."""

from __future__ import annotations

from pathlib import Path

import pytest

from geobus.errors import ConfigurationError
from geobus.settings import Settings, config_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_defaults_without_environment() -> None:
    """An empty environment gives the documented defaults."""
    settings = Settings.from_env({})
    assert settings.amqp_url == "amqp://guest:guest@127.0.0.1:5672/"
    assert settings.database_url == "geobus.gpkg"
    assert settings.prefix == "geobus"
    assert settings.target_crs == "EPSG:4326"
    assert settings.http_port == 8080
    assert not settings.uses_postgis


def test_values_are_parsed() -> None:
    """Variables are parsed into typed values."""
    settings = Settings.from_env(
        {
            "GEOBUS_DATABASE_URL": "postgresql://postgres@127.0.0.1/db",
            "GEOBUS_HTTP_PORT": "9000",
            "GEOBUS_TARGET_CRS": "EPSG:3857",
            "GEOBUS_SPOOL_DIR": "/var/spool/geobus",
            "GEOBUS_PREFIX": "tenant-a",
        }
    )
    assert settings.uses_postgis
    assert settings.http_port == 9000
    assert settings.spool_dir == Path("/var/spool/geobus")
    assert settings.prefix == "tenant-a"


def test_every_bad_value_is_named_at_once() -> None:
    """All bad variables are reported together, each by name."""
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env(
            {
                "GEOBUS_HTTP_PORT": "70000",
                "GEOBUS_AMQP_URL": "http://x",
                "GEOBUS_TARGET_CRS": "EPSG:999999",
                "GEOBUS_BATCH_MAX_FEATURES": "0",
                "GEOBUS_DATABASE_URL": "mysql://x",
                "GEOBUS_PREFIX": "Bad Prefix",
                "GEOBUS_REPAIR": "sometimes",
            }
        )
    text = str(info.value)
    for name in (
        "GEOBUS_HTTP_PORT",
        "GEOBUS_AMQP_URL",
        "GEOBUS_TARGET_CRS",
        "GEOBUS_BATCH_MAX_FEATURES",
        "GEOBUS_DATABASE_URL",
        "GEOBUS_PREFIX",
        "GEOBUS_REPAIR",
    ):
        assert name in text


def test_settings_are_frozen() -> None:
    """The settings object cannot be changed after start-up."""
    settings = Settings.from_env({})
    with pytest.raises(AttributeError):
        settings.prefix = "other"  # type: ignore[misc]


def test_readme_configuration_table_is_current() -> None:
    """The README's configuration table is the one generated from the settings."""
    assert config_table() in README.read_text(encoding="utf-8"), "run scripts/update-readme-config"
