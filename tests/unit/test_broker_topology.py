"""The broker topology as data: names, arguments, bindings, printing."""

from __future__ import annotations

import pytest

from geobus.broker import routing
from geobus.broker.topology import STAGES, BindingSpec, describe, from_settings, topology
from geobus.settings import Settings


def test_names_follow_the_prefix() -> None:
    """Names: <prefix>.features/.jobs/.dlx/.retry.<stage>/.canary, .<stage>, .dlq.<stage>."""
    spec = topology("acme")
    assert [(e.name, e.type.value) for e in spec.exchanges] == [
        ("acme.features", "topic"),
        ("acme.jobs", "topic"),
        ("acme.dlx", "topic"),
        *((f"acme.retry.{stage}", "direct") for stage in STAGES),
        ("acme.canary", "fanout"),
    ]
    assert all(e.durable for e in spec.exchanges)
    assert [q.name for q in spec.queues] == [
        "acme.validator",
        "acme.reprojector",
        "acme.writer",
        "acme.dlq.validator",
        "acme.dlq.reprojector",
        "acme.dlq.writer",
        *(f"acme.retry.{stage}.{n}" for stage in STAGES for n in range(1, 6)),
    ]
    assert spec.exchange_for(routing.JOB_SEALED) == "acme.jobs"
    assert spec.exchange_for(routing.FEATURE_STORED) == "acme.features"


def test_stage_queues_dead_letter_to_their_own_dlq() -> None:
    """A stage queue is quorum, with DLX, its own dead-letter key and the delivery limit."""
    spec = topology("acme", delivery_limit=4)
    assert spec.queue("acme.reprojector").argument_table == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "acme.dlx",
        "x-dead-letter-routing-key": "dlq.reprojector",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "x-delivery-limit": 4,
    }
    assert spec.queue("acme.dlq.reprojector").argument_table == {
        "x-queue-type": "quorum",
        "x-delivery-limit": 2**31 - 1,
    }
    assert BindingSpec("acme.dlq.reprojector", "acme.dlx", "dlq.reprojector") in spec.bindings


def test_bindings_of_the_stages() -> None:
    """validator ← ingested, reprojector ← validated, writer ← reprojected, rejected, job.sealed."""
    spec = topology("p")
    stage_bindings = {
        (b.queue, b.exchange, b.routing_key)
        for b in spec.bindings
        if ".dlq." not in b.queue and ".retry." not in b.queue
    }
    assert stage_bindings == {
        ("p.validator", "p.features", "feature.ingested"),
        ("p.reprojector", "p.features", "feature.validated"),
        ("p.writer", "p.features", "feature.reprojected"),
        ("p.writer", "p.features", "feature.rejected"),
        ("p.writer", "p.jobs", "job.sealed"),
    }
    assert not any(b.routing_key == routing.FEATURE_STORED for b in spec.bindings)


def test_describe_lists_queues_arguments_and_unbound_keys() -> None:
    """The printout names each queue with its arguments and the keys left for outside consumers."""
    text = describe(topology("p", delivery_limit=7))
    assert "p.dlq.writer" in text
    assert "x-delivery-limit = 7" in text
    assert "<- p.jobs [job.sealed]" in text
    assert "p.features [feature.stored]" in text.split("without a geobus queue")[1]


def test_bad_arguments_are_refused() -> None:
    """A non-positive delivery limit or an unknown stage raises ValueError."""
    with pytest.raises(ValueError, match="delivery_limit"):
        topology("p", delivery_limit=0)
    with pytest.raises(ValueError, match="unknown stage"):
        topology("p").stage_queue("ingress")


def test_retry_queues_expire_back_into_their_stage() -> None:
    """retry.<stage>.<n>: quorum, TTL = n-th delay, at-least-once DLX to the stage queue."""
    spec = topology("acme", retry_delays=(0.5, 2.0))
    assert spec.queue("acme.retry.writer.2").argument_table == {
        "x-queue-type": "quorum",
        "x-message-ttl": 2000,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "acme.writer",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    assert spec.retry_queue("writer", 1) == "acme.retry.writer.1"
    # Past the last level the last one repeats.
    assert spec.retry_queue("writer", 9) == "acme.retry.writer.2"
    assert (spec.retry_delay(1), spec.retry_delay(2), spec.retry_delay(7)) == (0.5, 2.0, 2.0)
    # Bound under its own name to its stage's retry exchange, and nowhere else.
    assert {
        (b.exchange, b.routing_key) for b in spec.bindings if b.queue == "acme.retry.writer.2"
    } == {("acme.retry.writer", "acme.retry.writer.2")}
    with pytest.raises(ValueError, match="retry_delays"):
        topology("p", retry_delays=())
    with pytest.raises(ValueError, match="start at 1"):
        spec.retry_queue("writer", 0)


def test_topology_from_settings_follows_the_settings() -> None:
    """GEOBUS_DELIVERY_LIMIT and GEOBUS_RETRY_DELAYS shape the declared queues."""
    settings = Settings.from_env(
        {"GEOBUS_PREFIX": "x", "GEOBUS_DELIVERY_LIMIT": "4", "GEOBUS_RETRY_DELAYS": "1,2.5"}
    )
    spec = from_settings(settings)
    assert spec.queue("x.validator").argument_table["x-delivery-limit"] == 4
    assert spec.queue("x.retry.validator.2").argument_table["x-message-ttl"] == 2500
    assert "x.retry.validator.3" not in {q.name for q in spec.queues}
