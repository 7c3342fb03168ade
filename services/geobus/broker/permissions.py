"""One RabbitMQ user per geobus service, each allowed only what it needs. Pure: no I/O.

RabbitMQ grants a user, per vhost, three regular expressions over resource
names (exchanges and queues alike):

- *configure* — declare (non-passively) and delete;
- *write* — publish to an exchange; be the queue of a ``queue.bind``;
- *read* — consume or ``basic.get`` from a queue, purge it; be the exchange
  of a ``queue.bind``;

and, per topic exchange, *topic permissions*: regular expressions over the
routing keys the user may publish (write) and bind (read). Passive declares
need no permission at all, which is what lets a service check that its
queues exist (``GEOBUS_DECLARE_TOPOLOGY=false``) without being able to
create or delete anything.

Every grant here is derived from :class:`~geobus.broker.topology.Topology`
— the same value that is declared — plus the routing keys each service
publishes (:data:`PUBLISHES`). Names are matched exactly (``^(a|b)$``), so
a tenant with prefix ``geobus-x`` shares nothing with ``geobus``. No
service may write to ``amq.default``: the default exchange routes by queue
name, so that grant would let a service put a message into *any* queue.
Retries go through the stage's own retry exchange instead, and the
ingress's canary through ``<prefix>.canary``.

The services:

=========== ==============================================================
ingress     publishes ``feature.ingested``/``feature.rejected`` and
            ``job.accepted``/``sealed``/``failed`` (its conversion worker
            processes run as the same user) and the canary
validator,  consume their queue; publish their output keys, their dead
reprojector letters (``<prefix>.dlx``, ``dlq.<stage>``) and retries (their
writer      ``<prefix>.retry.<stage>`` exchange)
operator    ``geobus dlq``: reads and purges the dead-letter queues,
            replays to where a message was first published
observer    a server-named exclusive queue (``amq.gen-…``) bound to
            ``job.completed``/``job.failed`` (``geobus up``'s job lines; any
            outside listener of job events)
admin       ``geobus topology``: declares everything (and may delete it)
=========== ==============================================================
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from geobus.broker import routing
from geobus.broker.topology import STAGES, Topology, dead_letter_routing_key, observer_queue

NOTHING = "^$"
"""The regular expression that matches no resource name."""
DEFAULT_EXCHANGE = "amq.default"
"""The name permissions give the default exchange ``""``."""


class Pattern(str):
    """A regular expression among resource names; :func:`names` leaves it as it is."""

    __slots__ = ()


SERVER_NAMED_QUEUES = Pattern(r"amq\.gen-.*")
"""Queues the broker names (``queue.declare`` with an empty name)."""

INGRESS = "ingress"
OPERATOR = "operator"
OBSERVER = "observer"
ADMIN = "admin"
SERVICES = (INGRESS, *STAGES, OPERATOR, OBSERVER, ADMIN)

PUBLISHES: Mapping[str, tuple[str, ...]] = {
    INGRESS: (
        routing.FEATURE_INGESTED,
        # Features refused while converting (not even GeoJSON geometry).
        routing.FEATURE_REJECTED,
        routing.JOB_ACCEPTED,
        routing.JOB_SEALED,
        routing.JOB_FAILED,
    ),
    "validator": (routing.FEATURE_VALIDATED, routing.FEATURE_REJECTED),
    "reprojector": (routing.FEATURE_REPROJECTED, routing.FEATURE_REJECTED),
    "writer": (routing.FEATURE_STORED, routing.FEATURE_REJECTED, routing.JOB_COMPLETED),
}
"""The routing keys each service publishes (on the exchange ``Topology.exchange_for`` names)."""

OBSERVED: tuple[str, ...] = (routing.JOB_COMPLETED, routing.JOB_FAILED)
"""The job events the observer binds its server-named queue to."""


@dataclass(frozen=True, slots=True)
class TopicGrant:
    """Routing keys a user may publish (``write``) and bind (``read``) on one topic exchange."""

    exchange: str
    write: str
    read: str


@dataclass(frozen=True, slots=True)
class Grant:
    """What one service's RabbitMQ user may do in one vhost."""

    service: str
    user: str
    vhost: str
    configure: str
    write: str
    read: str
    topics: tuple[TopicGrant, ...] = ()

    def as_json(self) -> dict[str, object]:
        """The grant as a JSON object (``topics`` a list of objects)."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Call:
    """One ``rabbitmqctl`` invocation; ``stdin`` carries a password (never the argv)."""

    argv: tuple[str, ...]
    stdin: str | None = None


def names(items: Iterable[str]) -> str:
    """A regular expression matching exactly ``items`` (``^$`` when there are none).

    Resource names of geobus hold letters, digits, ``_``, ``-`` and dots;
    the dot is the one metacharacter among them.
    """
    unique = sorted(set(items))
    if not unique:
        return NOTHING
    return "^(" + "|".join(_literal(item) for item in unique) + ")$"


def _literal(name: str) -> str:
    if isinstance(name, Pattern):
        return name
    return "".join("\\" + c if not (c.isalnum() or c in "_-") else c for c in name)


def vhost_of(amqp_url: str) -> str:
    """The vhost an AMQP URL names: its unquoted path, ``/`` when empty (as aio-pika does)."""
    path = urlsplit(amqp_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def default_user(prefix: str, service: str) -> str:
    """``<prefix>-<service>``: one user per service and prefix (tenant)."""
    return f"{prefix}-{service}"


@dataclass
class _Needs:
    """The resource names (and routing keys per topic exchange) one service touches."""

    configure: list[str] = field(default_factory=list)
    write: list[str] = field(default_factory=list)
    read: list[str] = field(default_factory=list)
    topic_write: dict[str, list[str]] = field(default_factory=dict)
    topic_read: dict[str, list[str]] = field(default_factory=dict)

    def publish(self, topology: Topology, keys: Iterable[str]) -> None:
        """Publishing ``keys``: write on their exchanges, those keys in the topic grants."""
        for key in keys:
            exchange = topology.exchange_for(key)
            self.write.append(exchange)
            self.topic_write.setdefault(exchange, []).append(key)

    def merge(self, other: _Needs) -> _Needs:
        """Everything either needs."""
        merged = _Needs(
            [*self.configure, *other.configure],
            [*self.write, *other.write],
            [*self.read, *other.read],
        )
        for mine, theirs, out in (
            (self.topic_write, other.topic_write, merged.topic_write),
            (self.topic_read, other.topic_read, merged.topic_read),
        ):
            for exchange in {*mine, *theirs}:
                out[exchange] = [*mine.get(exchange, ()), *theirs.get(exchange, ())]
        return merged

    def grant(self, service: str, user: str, vhost: str) -> Grant:
        """The RabbitMQ form: exact-name regexes, one topic grant per topic exchange touched."""
        topics = tuple(
            TopicGrant(
                exchange,
                names(self.topic_write.get(exchange, ())),
                names(self.topic_read.get(exchange, ())),
            )
            for exchange in sorted({*self.topic_write, *self.topic_read})
        )
        return Grant(
            service,
            user,
            vhost,
            names(self.configure),
            names(self.write),
            names(self.read),
            topics,
        )


def _needs(topology: Topology) -> dict[str, _Needs]:
    """What each service of :data:`SERVICES` touches in ``topology``."""
    needs = {service: _Needs() for service in SERVICES}
    ingress = needs[INGRESS]
    ingress.publish(topology, PUBLISHES[INGRESS])
    ingress.write.append(topology.canary_exchange)
    for stage in STAGES:
        own = needs[stage]
        own.publish(topology, PUBLISHES[stage])
        own.write += [topology.dead_letter_exchange, topology.retry_exchange(stage)]
        own.topic_write[topology.dead_letter_exchange] = [dead_letter_routing_key(stage)]
        own.read.append(topology.stage_queue(stage))
    # A replay goes back to where the message was first published: a stage's
    # input, on the exchange and key the stage queue is bound with.
    stage_queues = {topology.stage_queue(s) for s in STAGES}
    operator = needs[OPERATOR]
    operator.publish(
        topology, sorted({b.routing_key for b in topology.bindings if b.queue in stage_queues})
    )
    operator.read += [topology.dead_letter_queue(s) for s in STAGES]
    observer = needs[OBSERVER]
    # Queues job-event listeners name themselves (topology.observer_queue).
    named = Pattern(_literal(observer_queue(topology.prefix, "")) + ".*")
    listening: list[str] = [SERVER_NAMED_QUEUES, named]
    observer.configure += listening
    # queue.bind needs write on the queue and read on the exchange.
    observer.write += listening
    observer.read += [*listening, topology.jobs_exchange]
    observer.topic_read[topology.jobs_exchange] = list(OBSERVED)
    everything = [e.name for e in topology.exchanges] + [q.name for q in topology.queues]
    admin = needs[ADMIN]
    admin.configure += everything
    # Declaring a queue with a dead-letter exchange needs write on that
    # exchange (the retry queues dead-letter through the default one) and read
    # on the queue; binding needs write on the queue and read on the exchange.
    admin.write += [*everything, DEFAULT_EXCHANGE]
    admin.read += everything
    return needs


def grants(
    topology: Topology,
    vhost: str = "/",
    user: Callable[[str, str], str] = default_user,
    *,
    ingress_admin: bool = False,
) -> list[Grant]:
    """The grant of every service in :data:`SERVICES` for ``topology`` in ``vhost``.

    ``ingress_admin``: the ingress serves the admin dead-letter endpoints
    (``GEOBUS_ADMIN_TOKEN``), which do what ``geobus dlq`` does, so its user
    gets the operator's rights too.
    """
    needs = _needs(topology)
    if ingress_admin:
        needs[INGRESS] = needs[INGRESS].merge(needs[OPERATOR])
    return [needs[s].grant(s, user(topology.prefix, s), vhost) for s in SERVICES]


def to_json(all_grants: Sequence[Grant]) -> str:
    """The grants as a JSON array (what ``geobus topology --print-permissions --json`` prints)."""
    return json.dumps([g.as_json() for g in all_grants], indent=2)


def from_json(text: str) -> list[Grant]:
    """Grants back from :func:`to_json`'s output."""
    out = []
    for item in json.loads(text):
        topics = tuple(TopicGrant(**t) for t in item.pop("topics", ()))
        out.append(Grant(**item, topics=topics))
    return out


def describe(all_grants: Sequence[Grant]) -> str:
    """A human-readable table of the grants."""
    lines: list[str] = []
    for g in all_grants:
        lines += [
            f"{g.service}: user {g.user}, vhost {g.vhost}",
            f"  configure {g.configure}",
            f"  write     {g.write}",
            f"  read      {g.read}",
        ]
        lines += [f"  topic {t.exchange}: write {t.write}  read {t.read}" for t in g.topics]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def rabbitmqctl_calls(grant: Grant, password: str | None) -> list[Call]:
    """The ``rabbitmqctl`` calls that create ``grant``'s user and give it exactly ``grant``.

    ``add_user`` reads the password from standard input, so that it never
    shows in the process list; None skips creating the user. Topic
    permissions are cleared first, so that a re-run leaves no stale ones.
    """
    calls = []
    if password is not None:
        calls.append(Call(("rabbitmqctl", "add_user", grant.user), password + "\n"))
    calls.append(
        Call(
            (
                "rabbitmqctl",
                "set_permissions",
                "-p",
                grant.vhost,
                grant.user,
                grant.configure,
                grant.write,
                grant.read,
            )
        )
    )
    calls.append(Call(("rabbitmqctl", "clear_topic_permissions", "-p", grant.vhost, grant.user)))
    calls += [
        Call(
            (
                "rabbitmqctl",
                "set_topic_permissions",
                "-p",
                grant.vhost,
                grant.user,
                t.exchange,
                t.write,
                t.read,
            )
        )
        for t in grant.topics
    ]
    return calls


def password_variable(service: str) -> str:
    """``GEOBUS_PASSWORD_<SERVICE>``: where the shell script reads a service's password."""
    return "GEOBUS_PASSWORD_" + service.upper().replace("-", "_")


def shell_script(all_grants: Sequence[Grant]) -> str:
    """A POSIX shell script that creates every user and applies its grant.

    Passwords come from ``GEOBUS_PASSWORD_<SERVICE>`` variables and reach
    ``rabbitmqctl`` on standard input (``printf`` is a shell builtin: no
    process carries them in its arguments).
    """
    lines = [
        "#!/bin/sh",
        "# one RabbitMQ user per geobus service: geobus topology --print-permissions --rabbitmqctl",
        "set -eu",
    ]
    for g in all_grants:
        lines += ["", f"# {g.service}"]
        for call in rabbitmqctl_calls(g, ""):
            argv = " ".join(_quote(a) for a in call.argv)
            if call.stdin is not None:
                var = password_variable(g.service)
                # An existing user keeps its password (add_user fails): set it anew.
                lines.append(
                    f"printf '%s\\n' \"${var}\" | {argv} 2>/dev/null"
                    f" || printf '%s\\n' \"${var}\" | rabbitmqctl change_password {_quote(g.user)}"
                )
            else:
                lines.append(argv)
    return "\n".join(lines) + "\n"


def _quote(arg: str) -> str:
    if arg and all(c.isalnum() or c in "-_./" for c in arg):
        return arg
    return "'" + arg.replace("'", "'\\''") + "'"


def service_url(base_url: str, user: str, password: str) -> str:
    """``base_url`` (host, port, vhost, query such as ``cafile``) with ``user``'s credentials."""
    parts = urlsplit(base_url)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}{port}"
    return urlunsplit((parts.scheme or "amqp", netloc, parts.path or "/", parts.query, ""))
