"""Least privilege on the real RabbitMQ: one user per service, each refused outside its grant.

Users are created with ``scripts/rabbitmq-users`` from ``geobus topology
--print-permissions --json`` (this machine's ``rabbitmqctl``; the tests run
as root), the topology is declared by the admin user with ``geobus
topology``, and every process of the pipeline runs with its own
``GEOBUS_AMQP_URL`` and ``GEOBUS_DECLARE_TOPOLOGY=false``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import httpx
import pytest
from aiormq.exceptions import AMQPError, ChannelAccessRefused

from bench import datasets
from geobus.broker import routing
from geobus.broker.permissions import SERVICES, grants
from geobus.broker.publisher import Publisher
from geobus.broker.topology import STAGES, declare, delete, topology
from geobus.ingress.monitor import AmqpProbe
from tests.integration.conftest import GEOBUS, Pipeline, _delete_topology
from tests.integration.test_pipeline import post, wait_final

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Users:
    """The per-service users of one prefix: service → its GEOBUS_* variables."""

    prefix: str
    env: dict[str, dict[str, str]]
    directory: Path
    """Where the script wrote ``<service>.env``."""

    def url(self, service: str) -> str:
        """The service's AMQP URL (with its password)."""
        return self.env[service]["GEOBUS_AMQP_URL"]


def _env_file(path: Path) -> dict[str, str]:
    """The variables of an env file as a shell sourcing it sees them."""
    lines = [line.split("=", 1) for line in path.read_text().splitlines() if line]
    return {name: value.strip("'") for name, value in lines}


def _geobus(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GEOBUS, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory, amqp_url: str) -> Iterator[Users]:
    """A RabbitMQ user per service of a fresh prefix (deleted after), via the script.

    Module-wide: each rabbitmqctl call starts an Erlang VM (about a second).
    """
    tmp_path = tmp_path_factory.mktemp("users")
    prefix = f"t{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOBUS_")}
    printed = _geobus(
        {**env, "GEOBUS_PREFIX": prefix, "GEOBUS_AMQP_URL": amqp_url},
        "topology",
        "--print-permissions",
        "--json",
    )
    assert printed.returncode == 0, printed.stderr
    grants = tmp_path / "grants.json"
    grants.write_text(printed.stdout)
    script = [sys.executable, str(ROOT / "scripts" / "rabbitmq-users"), str(grants)]
    created = subprocess.run(
        [*script, "--env-dir", str(tmp_path / "users"), "--amqp-url", amqp_url],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    try:
        assert created.returncode == 0, created.stdout + created.stderr
        envs = {s: _env_file(tmp_path / "users" / f"{s}.env") for s in SERVICES}
        yield Users(prefix, envs, tmp_path / "users")
    finally:
        subprocess.run(
            [*script, "--delete"], env=env, capture_output=True, timeout=300, check=False
        )
        listed = subprocess.run(
            ["rabbitmqctl", "-q", "list_users"], capture_output=True, text=True, check=False
        )
        assert f"{prefix}-" not in listed.stdout


def test_pipeline_runs_with_one_least_privilege_user_per_service(
    pipeline: Pipeline, users: Users
) -> None:
    """admin declares; ingress and stages with their own users complete countries-land-10km."""
    # The pipeline fixture deletes the topology of this prefix afterwards.
    pipeline.env["GEOBUS_PREFIX"] = users.prefix
    # As the README says: source the admin's env file in a shell, declare once.
    declared = subprocess.run(
        ["sh", "-c", f'set -a; . "$1"; set +a; exec "{GEOBUS}" topology', "sh", "./admin.env"],
        cwd=users.directory,
        env={**pipeline.env, "GEOBUS_AMQP_URL": "amqp://nobody:x@127.0.0.1:5672/"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert declared.returncode == 0, declared.stderr
    pipeline.env["GEOBUS_DECLARE_TOPOLOGY"] = "false"
    # Every process started below has its own user; none uses the base URL.
    pipeline.service_env.update({s: users.env[s] for s in ("ingress", *STAGES)})
    pipeline.start_all()
    job = wait_final(pipeline, post(pipeline, datasets.path("countries-land-10km"))["jobID"])
    assert job["status"] == "successful", job
    assert job["counts"]["received"] == 220
    assert job["counts"]["stored"] + job["counts"]["rejected"] == 220
    # The operator's dead-letter tooling works with its user (read DLQs, nothing else).
    listed = _geobus({**pipeline.env, **users.env["operator"]}, "dlq", "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    for name in pipeline.processes:
        assert "ACCESS_REFUSED" not in pipeline.log(name), pipeline.log(name)


async def _refused(url: str, attempt: str, prefix: str) -> str:
    """Try one thing outside the validator's grant; the broker's refusal text."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=False)
        message = aio_pika.Message(b"x")
        try:
            if attempt == "publish-to-writer-queue":
                await channel.default_exchange.publish(message, f"{prefix}.writer")
            elif attempt == "publish-another-stages-key":
                exchange = await channel.get_exchange(f"{prefix}.features", ensure=False)
                await exchange.publish(message, routing.FEATURE_REPROJECTED, mandatory=False)
            elif attempt == "publish-to-another-stages-retries":
                exchange = await channel.get_exchange(f"{prefix}.retry.writer", ensure=False)
                await exchange.publish(message, f"{prefix}.retry.writer.1")
            elif attempt == "declare-a-queue":
                await channel.declare_queue(f"{prefix}.mine", durable=True)
            elif attempt == "consume-the-writer-queue":
                queue = await channel.declare_queue(f"{prefix}.writer", passive=True)
                await queue.get(fail=False)
            elif attempt == "delete-its-own-queue":
                await channel.queue_delete(f"{prefix}.validator", if_unused=False, if_empty=False)
        except ChannelAccessRefused as exc:
            return str(exc)
        except AMQPError as exc:  # the channel died of the refusal during the confirm
            return repr(exc)
    return "allowed"


@pytest.mark.parametrize(
    "attempt",
    [
        "publish-to-writer-queue",
        "publish-another-stages-key",
        "publish-to-another-stages-retries",
        "declare-a-queue",
        "consume-the-writer-queue",
        "delete-its-own-queue",
    ],
)
def test_validator_user_is_refused_outside_its_grant(
    users: Users, amqp_url: str, attempt: str
) -> None:
    """The validator's user gets ACCESS_REFUSED for others' queues, keys, and any configure."""
    spec = topology(users.prefix)

    async def run() -> str:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            await declare(await connection.channel(), spec)
            try:
                return await _refused(users.url("validator"), attempt, users.prefix)
            finally:
                await delete(await connection.channel(), spec)

    refusal = asyncio.run(run())
    assert "ACCESS_REFUSED" in refusal, refusal


def test_service_with_declaring_on_says_how_to_fix_it(
    pipeline_env: dict[str, str], users: Users
) -> None:
    """A least-privilege worker left declaring fails naming GEOBUS_DECLARE_TOPOLOGY=false."""
    env = {
        **pipeline_env,
        **users.env["validator"],
        "GEOBUS_PREFIX": users.prefix,
        "GEOBUS_DECLARE_TOPOLOGY": "true",
    }
    done = _geobus(env, "worker", "validator")
    assert done.returncode != 0
    assert "ACCESS_REFUSED" in done.stderr
    assert "GEOBUS_DECLARE_TOPOLOGY=false" in done.stderr


def test_service_without_the_topology_names_what_is_missing(
    pipeline_env: dict[str, str], users: Users
) -> None:
    """Checking only (declaring off) on an undeclared prefix: exit with the missing queue named."""
    env = {**pipeline_env, **users.env["writer"], "GEOBUS_PREFIX": users.prefix}
    assert env["GEOBUS_DECLARE_TOPOLOGY"] == "false"
    done = _geobus(env, "worker", "writer")
    assert done.returncode != 0
    assert f"queue {users.prefix}.writer" in done.stderr
    assert "run `geobus topology`" in done.stderr


def test_observer_binds_a_server_named_queue_to_job_events(users: Users, amqp_url: str) -> None:
    """observer: an exclusive amq.gen-* queue gets job.completed; binding job.sealed is refused."""
    spec = topology(users.prefix)

    async def run() -> tuple[bytes, str]:
        admin = await aio_pika.connect(amqp_url)
        async with admin:
            await declare(await admin.channel(), spec)
            try:
                observer = await aio_pika.connect(users.url("observer"))
                async with observer:
                    channel = await observer.channel()
                    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
                    assert queue.name.startswith("amq.gen-")
                    await queue.bind(spec.jobs_exchange, routing.JOB_COMPLETED)
                    jobs = await (await admin.channel()).get_exchange(spec.jobs_exchange)
                    await jobs.publish(aio_pika.Message(b"done"), routing.JOB_COMPLETED)
                    got = await queue.get(timeout=5)
                    await got.ack()
                    try:
                        await queue.bind(spec.jobs_exchange, routing.JOB_SEALED)
                    except ChannelAccessRefused as exc:
                        return got.body, str(exc)
                    return got.body, "allowed"
            finally:
                await delete(await admin.channel(), spec)

    body, refusal = asyncio.run(run())
    assert body == b"done"
    assert "ACCESS_REFUSED" in refusal


def test_grants_json_is_what_the_broker_holds(users: Users) -> None:
    """After the script, rabbitmqctl lists exactly the printed permissions for each user."""
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_permissions", "-p", "/", "--formatter", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    held = {p["user"]: p for p in json.loads(listed.stdout)}
    for grant in grants(topology(users.prefix)):
        assert (
            held[grant.user]["configure"],
            held[grant.user]["write"],
            held[grant.user]["read"],
        ) == (
            grant.configure,
            grant.write,
            grant.read,
        )


@pytest.mark.parametrize(
    ("service", "exchange", "key"),
    [
        ("validator", "features", routing.FEATURE_VALIDATED),
        ("validator", "retry.validator", "retry.validator.1"),
        ("validator", "dlx", "dlq.validator"),
        ("writer", "jobs", routing.JOB_COMPLETED),
        ("ingress", "jobs", routing.JOB_FAILED),
        ("ingress", "canary", ""),
        ("operator", "features", routing.FEATURE_REPROJECTED),
    ],
)
def test_service_users_may_publish_what_their_service_publishes(
    users: Users, amqp_url: str, service: str, exchange: str, key: str
) -> None:
    """Paths the pipeline test may not take (retry, dead letter, job.failed, replay) are granted."""
    spec = topology(users.prefix)
    prefix = f"{users.prefix}."
    routing_key = prefix + key if key.startswith("retry.") else key

    async def run() -> None:
        admin = await aio_pika.connect(amqp_url)
        async with admin:
            await declare(await admin.channel(), spec)
            try:
                if exchange == "canary":
                    # The ingress's own probe, as the ingress wires it.
                    probe = await AmqpProbe.connect(
                        users.url(service), [], f"{prefix}canary", spec.canary_exchange
                    )
                    try:
                        await asyncio.wait_for(probe.publish_canary(), 10)
                    finally:
                        await probe.close()
                    return
                publisher = await Publisher.connect(
                    users.url(service), spec, declare_topology=True, passive=True
                )
                async with publisher:
                    if key in routing.MESSAGE_TYPES:
                        await publisher.publish(
                            prefix + exchange,
                            routing_key,
                            b"x",
                            message_id=f"lp:{key}",
                            correlation_id="lp",
                            stage=service,
                        )
                    else:  # as a retry or a dead letter travels: mandatory, confirmed
                        message = aio_pika.Message(b"x", message_id=f"lp:{key}")
                        await publisher.publish_message(prefix + exchange, routing_key, message)
            finally:
                await delete(await admin.channel(), spec)

    asyncio.run(run())


def test_geobus_up_with_one_user_per_service(
    pipeline_env: dict[str, str], users: Users, amqp_url: str, tmp_path: Path
) -> None:
    """geobus up --env-dir: each child connects as its service's user, up itself as observer."""
    env = {**pipeline_env, **users.env["observer"], "GEOBUS_PREFIX": users.prefix}
    assert env["GEOBUS_DECLARE_TOPOLOGY"] == "false"
    admin = _geobus({**env, **users.env["admin"]}, "topology")
    assert admin.returncode == 0, admin.stderr
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen(
            [GEOBUS, "up", "--env-dir", str(users.directory)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{env['GEOBUS_HTTP_PORT']}"
        deadline = time.monotonic() + 90
        while not _ready(base):
            assert up.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.3)
        pipeline = Pipeline(env=env, logs=tmp_path)
        job_id = post(pipeline, datasets.path("countries-land-10km"))["jobID"]
        assert wait_final(pipeline, job_id)["status"] == "successful"
        listed = subprocess.run(
            ["rabbitmqctl", "-q", "list_connections", "user", "--formatter", "json"],
            capture_output=True,
            text=True,
            check=True,
        )
        connected = {c["user"] for c in json.loads(listed.stdout)}
        mine = {u for u in connected if u.startswith(f"{users.prefix}-")}
        expected = {"ingress", "validator", "reprojector", "writer", "observer"}
        assert mine == {f"{users.prefix}-{s}" for s in expected}
        # The job line comes from up's own observer connection.
        deadline = time.monotonic() + 10
        while f"job {job_id} successful" not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.2)
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=90)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
        _delete_topology(amqp_url, users.prefix)
    assert "ACCESS_REFUSED" not in log.read_text(errors="replace")


def _ready(base: str) -> bool:
    try:
        return httpx.get(base + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
