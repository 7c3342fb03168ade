"""Credentials travel by environment only: never in a process's argv, never in the logs.

``geobus up`` runs with a password in ``GEOBUS_AMQP_URL`` (a RabbitMQ user
made for the test) and in ``GEOBUS_DATABASE_URL`` (PostgreSQL here trusts
local connections and ignores it), at DEBUG level, through a whole job.
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench import datasets
from tests.integration.conftest import GEOBUS, _delete_topology
from tests.integration.test_pipeline import post, wait_final

pytestmark = pytest.mark.integration


def _rabbitmqctl(*args: str, stdin: str | None = None) -> None:
    done = subprocess.run(
        ["rabbitmqctl", *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def broker_user() -> Iterator[tuple[str, str]]:
    """(user, password): a RabbitMQ user with a password found nowhere else; deleted after."""
    user, password = f"h-{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
    _rabbitmqctl("add_user", user, stdin=password + "\n")
    try:
        _rabbitmqctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
        yield user, password
    finally:
        _rabbitmqctl("delete_user", user)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, grandchildren…), from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def test_geobus_up_keeps_passwords_out_of_argv_and_logs(
    pipeline_env: dict[str, str],
    broker_user: tuple[str, str],
    fresh_pg_url: str,
    tmp_path: Path,
) -> None:
    """No /proc/<pid>/cmdline of up or its children, and no log line, holds either password."""
    user, amqp_password = broker_user
    db_password = f"dbpw-{uuid.uuid4().hex}"
    env = {
        **pipeline_env,
        "GEOBUS_AMQP_URL": f"amqp://{user}:{amqp_password}@127.0.0.1:5672/",
        "GEOBUS_DATABASE_URL": fresh_pg_url.replace("postgres@", f"postgres:{db_password}@"),
        "GEOBUS_LOG_LEVEL": "DEBUG",
    }
    secrets = (amqp_password.encode(), db_password.encode())
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen([GEOBUS, "up"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        ready = f"http://127.0.0.1:{env['GEOBUS_HTTP_PORT']}/readyz"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(ready, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert up.poll() is None, log.read_text(errors="replace")
            time.sleep(0.3)
        else:
            pytest.fail("geobus up did not become ready:\n" + log.read_text(errors="replace"))

        class Base:
            base_url = f"http://127.0.0.1:{env['GEOBUS_HTTP_PORT']}"

        job = wait_final(Base, post(Base, datasets.path("countries-land-10km"))["jobID"])  # type: ignore[arg-type]
        assert job["status"] == "successful", job

        processes = [up.pid, *_descendants(up.pid)]
        # up, the ingress and three stages at least (plus their worker processes).
        assert len(processes) >= 5, processes
        for pid in processes:
            cmdline = _read(Path(f"/proc/{pid}/cmdline"))
            assert not any(s in cmdline for s in secrets), (pid, cmdline)
        # They do have the credentials: in their environment, readable by their owner only.
        environs = [_read(Path(f"/proc/{pid}/environ")) for pid in processes]
        assert sum(amqp_password.encode() in e for e in environs) >= 5
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=90)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
        _delete_topology(pipeline_env["GEOBUS_AMQP_URL"], pipeline_env["GEOBUS_PREFIX"])
    text = log.read_bytes()
    assert not any(s in text for s in secrets), "a password was logged"
    # The store URL was logged — redacted.
    assert b"postgres:***@127.0.0.1:5432/" in text
    assert b'"level": "debug"' in text  # the most talkative level was on


def test_refused_credentials_are_reported_without_the_password(
    pipeline_env: dict[str, str], broker_user: tuple[str, str]
) -> None:
    """A worker with a wrong password exits naming ACCESS_REFUSED, not the password it tried."""
    user, _ = broker_user
    wrong = f"wrong-{uuid.uuid4().hex}"
    env = {**pipeline_env, "GEOBUS_AMQP_URL": f"amqp://{user}:{wrong}@127.0.0.1:5672/"}
    done = subprocess.run(
        [GEOBUS, "worker", "writer"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "ACCESS_REFUSED" in done.stderr + done.stdout
    assert wrong not in done.stderr + done.stdout
