"""Per-service RabbitMQ grants derived from the topology, and their rabbitmqctl form."""

from __future__ import annotations

import json
import re

import pytest

from geobus import cli
from geobus.broker import permissions, routing
from geobus.broker.permissions import Grant, TopicGrant
from geobus.broker.redelivery import dead_letter_copy, retry_copy
from geobus.broker.topology import STAGES, observer_queue, topology
from geobus.errors import ConfigurationError, TransientError
from geobus.settings import Settings
from tests.unit.test_broker_redelivery import incoming

SPEC = topology("acme", retry_delays=(1.0, 5.0, 30.0))
GRANTS = {g.service: g for g in permissions.grants(SPEC)}


def allows(pattern: str, name: str) -> bool:
    """Whether a permission regex admits ``name`` (RabbitMQ searches; ours are anchored)."""
    return re.search(pattern, name) is not None


def topic(grant: Grant, exchange: str) -> TopicGrant:
    """The grant's topic permissions on ``exchange``."""
    (found,) = [t for t in grant.topics if t.exchange == exchange]
    return found


def test_every_service_has_a_user_of_its_own() -> None:
    """One user per service, named <prefix>-<service>, all in the vhost asked for."""
    grants = permissions.grants(SPEC, "tenant-a")
    assert [g.service for g in grants] == list(permissions.SERVICES)
    assert {g.user for g in grants} == {f"acme-{s}" for s in permissions.SERVICES}
    assert {g.vhost for g in grants} == {"tenant-a"}


def test_a_stage_reads_only_its_own_queue_and_configures_nothing() -> None:
    """validator: reads its queue only, configures nothing, writes outputs/DLX/own retries."""
    grant = GRANTS["validator"]
    assert grant.configure == permissions.NOTHING
    readable = [q.name for q in SPEC.queues if allows(grant.read, q.name)]
    assert readable == ["acme.validator"]
    writable = [e.name for e in SPEC.exchanges if allows(grant.write, e.name)]
    assert writable == ["acme.features", "acme.dlx", "acme.retry.validator"]
    # Not a queue of anyone else, not another stage's retries, not the default exchange.
    for name in ("acme.writer", "acme.retry.writer", "acme.retry.validator.1", "amq.default"):
        assert not allows(grant.write, name), name
    assert allows(topic(grant, "acme.features").write, routing.FEATURE_VALIDATED)
    assert not allows(topic(grant, "acme.features").write, routing.FEATURE_REPROJECTED)
    assert allows(topic(grant, "acme.dlx").write, "dlq.validator")
    assert not allows(topic(grant, "acme.dlx").write, "dlq.writer")


def test_no_service_but_the_admin_may_write_to_the_default_exchange() -> None:
    """amq.default routes by queue name to any queue: only the admin (retry queues' DLX) has it."""
    holders = [g.service for g in GRANTS.values() if allows(g.write, "amq.default")]
    assert holders == ["admin"]


def test_what_the_stages_publish_is_granted() -> None:
    """Each stage's outputs, retry_copy and dead_letter_copy targets pass its grant."""
    for stage in STAGES:
        grant = GRANTS[stage]
        for key in permissions.PUBLISHES[stage]:
            exchange = SPEC.exchange_for(key)
            assert allows(grant.write, exchange)
            assert allows(topic(grant, exchange).write, key), (stage, key)
        retry_exchange, _, _ = retry_copy(
            incoming(), TransientError("x"), stage=stage, topology=SPEC
        )
        assert allows(grant.write, retry_exchange)
        dlx, key, _ = dead_letter_copy(
            incoming(), ValueError("x"), stage=stage, topology=SPEC, reason="error"
        )
        assert allows(grant.write, dlx)
        assert allows(topic(grant, dlx).write, key)


def test_ingress_publishes_its_keys_and_the_canary_only() -> None:
    """ingress: writes features/jobs/canary with its own keys only; reads nothing."""
    grant = GRANTS["ingress"]
    assert (grant.configure, grant.read) == (permissions.NOTHING, permissions.NOTHING)
    assert [e.name for e in SPEC.exchanges if allows(grant.write, e.name)] == [
        "acme.features",
        "acme.jobs",
        "acme.canary",
    ]
    features, jobs = topic(grant, "acme.features"), topic(grant, "acme.jobs")
    assert allows(features.write, "feature.ingested")
    assert not allows(features.write, "feature.validated")
    assert allows(jobs.write, "job.sealed")
    assert not allows(jobs.write, "job.completed")


def test_operator_reads_dead_letters_and_replays_to_stage_inputs() -> None:
    """operator: read the three DLQs; replay (write) to the keys the stage queues are bound with."""
    grant = GRANTS["operator"]
    assert [q.name for q in SPEC.queues if allows(grant.read, q.name)] == [
        f"acme.dlq.{s}" for s in STAGES
    ]
    bound = {
        (b.exchange, b.routing_key)
        for b in SPEC.bindings
        if b.queue in {SPEC.stage_queue(s) for s in STAGES}
    }
    for exchange, key in bound:
        assert allows(grant.write, exchange)
        assert allows(topic(grant, exchange).write, key)
    assert not allows(topic(grant, "acme.features").write, "feature.stored")


def test_observer_uses_listener_queues_only() -> None:
    """observer: amq.gen-* and <prefix>.observer.* queues; binds job.completed/failed only."""
    grant = GRANTS["observer"]
    assert allows(grant.configure, "amq.gen-JzTY20BRgKO-HjmUJj0wLg")
    assert allows(grant.configure, observer_queue("acme", "up-0a1b2c"))
    for name in ("acme.writer", "acme-x.observer.up-1", "acmeXobserver.y", "amq_0bda0cc4"):
        assert not allows(grant.configure, name), name
    assert allows(grant.read, "acme.jobs")
    assert allows(topic(grant, "acme.jobs").read, "job.completed")
    assert not allows(topic(grant, "acme.jobs").read, "job.sealed")


def test_admin_may_configure_every_object_of_its_prefix_only() -> None:
    """admin: configure/write/read every exchange and queue of the topology; no other tenant's."""
    grant = GRANTS["admin"]
    for name in [e.name for e in SPEC.exchanges] + [q.name for q in SPEC.queues]:
        assert allows(grant.configure, name)
        assert allows(grant.write, name)
        assert allows(grant.read, name)
    other = {g.service: g for g in permissions.grants(topology("acme-x"))}
    for name in [e.name for e in SPEC.exchanges] + [q.name for q in SPEC.queues]:
        assert not any(allows(g.configure, name) for g in other.values()), name
        assert not any(allows(g.write, name) for g in other.values()), name


def test_rabbitmqctl_calls_pass_the_password_on_stdin() -> None:
    """add_user reads the password on stdin, never in argv; then (topic) permissions."""
    calls = permissions.rabbitmqctl_calls(GRANTS["writer"], "s3cret-pw")
    assert calls[0].argv == ("rabbitmqctl", "add_user", "acme-writer")
    assert calls[0].stdin == "s3cret-pw\n"
    assert all("s3cret-pw" not in " ".join(c.argv) for c in calls)
    grant = GRANTS["writer"]
    assert calls[1].argv == (
        "rabbitmqctl",
        "set_permissions",
        "-p",
        "/",
        "acme-writer",
        grant.configure,
        grant.write,
        grant.read,
    )
    assert calls[2].argv[1] == "clear_topic_permissions"
    assert [c.argv[5] for c in calls[3:]] == [t.exchange for t in grant.topics]


def test_shell_script_reads_passwords_from_the_environment() -> None:
    """The --rabbitmqctl script pipes $GEOBUS_PASSWORD_<SERVICE> into add_user, per service."""
    script = permissions.shell_script(permissions.grants(SPEC))
    assert script.startswith("#!/bin/sh\n")
    assert (
        "printf '%s\\n' \"$GEOBUS_PASSWORD_VALIDATOR\" | rabbitmqctl add_user acme-validator"
        in script
    )
    assert "set_permissions -p / acme-validator '^$'" in script
    assert script.count("rabbitmqctl add_user") == len(permissions.SERVICES)


def test_json_round_trips() -> None:
    """from_json(to_json(grants)) == grants."""
    grants = permissions.grants(SPEC)
    assert permissions.from_json(permissions.to_json(grants)) == grants


@pytest.mark.parametrize(
    ("url", "vhost"),
    [
        ("amqp://u:p@h/", "/"),
        ("amqp://u:p@h", "/"),
        ("amqps://u:p@h:5671/%2F", "/"),
        ("amqp://u:p@h/tenant-a?heartbeat=30", "tenant-a"),
    ],
)
def test_vhost_of_an_amqp_url(url: str, vhost: str) -> None:
    """The vhost is the URL's unquoted path; an empty path is "/"."""
    assert permissions.vhost_of(url) == vhost


def test_cli_prints_permissions_as_json_without_a_broker(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """geobus topology --print-permissions --json: the grants of GEOBUS_PREFIX, nothing declared."""
    monkeypatch.setenv("GEOBUS_PREFIX", "acme")
    # An address nothing listens on: the command must not need the broker.
    monkeypatch.setenv("GEOBUS_AMQP_URL", "amqp://u:p@127.0.0.1:1/tenant")
    assert cli.main(["topology", "--print-permissions", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [g["service"] for g in printed] == list(permissions.SERVICES)
    assert {g["vhost"] for g in printed} == {"tenant"}


def test_declare_topology_setting() -> None:
    """GEOBUS_DECLARE_TOPOLOGY defaults to true and parses false."""
    assert Settings.from_env({}).declare_topology is True
    assert Settings.from_env({"GEOBUS_DECLARE_TOPOLOGY": "false"}).declare_topology is False


def test_a_bad_url_setting_does_not_echo_its_password() -> None:
    """An AMQP or database URL with a wrong scheme is refused without printing its password."""
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(
            {
                "GEOBUS_AMQP_URL": "amqq://svc:hunter2@broker/",
                "GEOBUS_DATABASE_URL": "postgresq://svc:hunter2@db/geo",
            }
        )
    assert "hunter2" not in str(caught.value)
    assert "svc:***@broker" in str(caught.value)


def test_ingress_serving_admin_endpoints_gets_the_operators_rights_too() -> None:
    """ingress_admin=True: the ingress grant is its own united with the operator's, no more."""
    plain = GRANTS["ingress"]
    admin = {g.service: g for g in permissions.grants(SPEC, ingress_admin=True)}["ingress"]
    operator = GRANTS["operator"]
    for name in [e.name for e in SPEC.exchanges] + [q.name for q in SPEC.queues]:
        for kind in ("configure", "write", "read"):
            expected = allows(getattr(plain, kind), name) or allows(getattr(operator, kind), name)
            assert allows(getattr(admin, kind), name) == expected, (kind, name)
    features = topic(admin, "acme.features")
    assert allows(features.write, "feature.validated")  # a replay of the reprojector's input
    assert not allows(features.write, "feature.stored")
