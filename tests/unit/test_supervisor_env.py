"""``geobus up --env-dir``: per-service variables from env files, handed down by environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from geobus.errors import ConfigurationError
from geobus.supervisor import commands, read_env_file, service_env


def test_env_file_lines_quotes_and_comments(tmp_path: Path) -> None:
    """NAME=value, 'quoted', "quoted", export NAME=…; blank lines and # comments skipped."""
    path = tmp_path / "writer.env"
    path.write_text(
        "# written by scripts/rabbitmq-users\n\n"
        "GEOBUS_AMQP_URL='amqps://w:p%26w@h:5671/?cafile=/ca.pem&heartbeat=30'\n"
        'export GEOBUS_PREFIX="acme"\n'
        "GEOBUS_DECLARE_TOPOLOGY=false\n"
    )
    assert read_env_file(path) == {
        "GEOBUS_AMQP_URL": "amqps://w:p%26w@h:5671/?cafile=/ca.pem&heartbeat=30",
        "GEOBUS_PREFIX": "acme",
        "GEOBUS_DECLARE_TOPOLOGY": "false",
    }


def test_a_bad_line_is_named_without_its_content(tmp_path: Path) -> None:
    """A line that is not NAME=value fails with file and line number, not the (secret) text."""
    path = tmp_path / "ingress.env"
    path.write_text("GEOBUS_A=1\namqp://u:hunter2@h/\n")
    with pytest.raises(ConfigurationError, match=r"ingress\.env:2: expected NAME=value") as caught:
        read_env_file(path)
    assert "hunter2" not in str(caught.value)


def test_each_child_gets_its_services_file(tmp_path: Path) -> None:
    """validator-1 and -2 get validator.env; a service without a file gets nothing extra."""
    (tmp_path / "validator.env").write_text("GEOBUS_AMQP_URL=amqp://v:pv@h/\n")
    (tmp_path / "ingress.env").write_text("GEOBUS_AMQP_URL=amqp://i:pi@h/\n")
    children = commands(2, metrics_port=9100)
    service_env(tmp_path, children)
    env = {c.name: c.env for c in children}
    assert env["ingress"] == {"GEOBUS_AMQP_URL": "amqp://i:pi@h/"}
    assert env["validator-2"]["GEOBUS_AMQP_URL"] == "amqp://v:pv@h/"
    assert "GEOBUS_METRICS_PORT" in env["validator-2"]  # what up sets itself stays
    assert "GEOBUS_AMQP_URL" not in env["writer-1"]
    # Credentials are in the environment, never in the argv.
    assert all("pv" not in " ".join(c.argv) for c in children)
    with pytest.raises(ConfigurationError, match="no such directory"):
        service_env(tmp_path / "missing", children)
