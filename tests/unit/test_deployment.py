"""compose.yaml runs the very commands that `geobus up` and the integration tests run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from geobus.settings import Settings
from geobus.supervisor import commands

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return document


def test_compose_services_run_the_supervised_commands() -> None:
    """Each geobus container's command is one of the processes `geobus up` starts."""
    services = _compose()["services"]
    native = {tuple(child.argv[3:]) for child in commands(replicas=1)}
    containers = {
        tuple(service["command"])
        for name, service in services.items()
        if name not in ("rabbitmq", "postgis")
    }
    assert containers == native


def test_dockerfile_runs_geobus_as_non_root() -> None:
    """The image's entry point is the geobus CLI and it does not run as root."""
    text = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["geobus"]' in text
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users
    assert users[-1].split(":")[0] not in ("root", "0")


def test_compose_configures_only_known_settings() -> None:
    """Every GEOBUS_* variable in compose.yaml is a real setting (no typo goes unnoticed)."""
    known = {"GEOBUS_" + name.upper() for name in Settings.__dataclass_fields__}
    used: set[str] = set()
    for service in _compose()["services"].values():
        used |= {k for k in (service.get("environment") or {}) if k.startswith("GEOBUS_")}
    assert used
    assert used <= known, used - known
