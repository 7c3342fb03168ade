"""One frozen settings object, built once at start-up from ``GEOBUS_*`` variables.

``Settings.from_env(mapping)`` takes any mapping so that tests pass their own;
``Settings.from_env()`` reads ``os.environ``. Every value is parsed and checked
here, so a bad deployment fails at start-up with a message naming the
variable, never later in the middle of a job.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from geobus.errors import ConfigurationError

T = TypeVar("T")

_RETRY_DELAYS: tuple[float, ...] = (1.0, 5.0, 30.0, 120.0, 600.0)
_NO_NETWORKS: tuple[IPv4Network | IPv6Network, ...] = ()
_NO_SECRETS: tuple[str, ...] = ()
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
# RFC 6750's b64token: what fits an Authorization header without quoting.
_TOKEN_RE = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
ADMIN_TOKEN_MIN = 32


def _url(value: str, schemes: tuple[str, ...]) -> str:
    scheme = urlsplit(value).scheme
    if scheme not in schemes:
        # redact: the message is printed, and the URL may hold a password.
        msg = f"expected a URL with scheme {' or '.join(schemes)}, got {redact(value)!r}"
        raise ValueError(msg)
    return value


def _amqp_url(value: str) -> str:
    return _url(value, ("amqp", "amqps"))


def _database_url(value: str) -> str:
    """A ``postgresql://`` URL, or a GeoPackage path (``*.gpkg``, optionally ``gpkg:`` prefixed)."""
    if value.startswith(("postgresql://", "postgres://")):
        return value
    path = value.removeprefix("gpkg:")
    if not path.endswith(".gpkg"):
        msg = f"expected postgresql://… or a path ending in .gpkg, got {redact(value)!r}"
        raise ValueError(msg)
    return path


def _prefix(value: str) -> str:
    if not _PREFIX_RE.fullmatch(value):
        msg = f"expected lower-case letters, digits, '-' or '_' (1-63, letter first), got {value!r}"
        raise ValueError(msg)
    return value


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        msg = f"expected a positive integer, got {value!r}"
        raise ValueError(msg)
    return number


def _int_within(value: str, low: int, high: int, expected: str) -> int:
    number = int(value)
    if not low <= number <= high:
        msg = f"expected {expected}, got {value!r}"
        raise ValueError(msg)
    return number


def _niceness(value: str) -> int:
    return _int_within(value, 0, 19, "a nice increment 0-19")


def _rt_priority(value: str) -> int:
    return _int_within(value, 0, 99, "0 (off) or a real-time priority 1-99")


def _port(value: str) -> int:
    return _int_within(value, 1, 65535, "a TCP port 1-65535")


def _port_or_zero(value: str) -> int:
    return 0 if value.strip() == "0" else _port(value)


def _log_level(value: str) -> str:
    level = value.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        msg = f"expected DEBUG, INFO, WARNING, ERROR or CRITICAL, got {value!r}"
        raise ValueError(msg)
    return level


def _delays(value: str) -> tuple[float, ...]:
    try:
        delays = tuple(float(part) for part in value.split(","))
    except ValueError:
        delays = ()
    if not delays or any(not 0 < d <= 86400 for d in delays):
        msg = f"expected comma-separated seconds (each > 0 and at most a day), got {value!r}"
        raise ValueError(msg)
    return delays


def _seconds(value: str) -> float:
    seconds = float(value)
    if not 0 <= seconds <= 86400:
        msg = f"expected seconds from 0 to 86400, got {value!r}"
        raise ValueError(msg)
    return seconds


def _time_limit(value: str) -> float:
    seconds = float(value)
    # RabbitMQ closes the channel of a consumer holding a message 30 min.
    if not 0 < seconds <= 1200:
        msg = f"expected seconds above 0 and at most 1200 (20 min), got {value!r}"
        raise ValueError(msg)
    return seconds


def _workers(value: str) -> int:
    number = int(value)
    if not 0 <= number <= 256:
        msg = f"expected 0 to 256 worker processes, got {value!r}"
        raise ValueError(msg)
    return number


def _crs(value: str) -> str:
    # Imported here: pyproj's database load is not free and settings are
    # also built by light commands.
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        CRS.from_user_input(value)
    except CRSError as exc:
        msg = f"PROJ does not know the CRS {value!r}: {exc}"
        raise ValueError(msg) from exc
    return value


def _boolean(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    msg = f"expected true or false, got {value!r}"
    raise ValueError(msg)


def _digits(value: str) -> int:
    """Decimal digits after the point (0-15: a double holds about 15-17 significant digits)."""
    number = int(value)
    if not 0 <= number <= 15:
        msg = f"expected decimal digits 0-15, got {value!r}"
        raise ValueError(msg)
    return number


def _magnitude(value: str) -> float:
    number = float(value)
    if not 0 < number < float("inf"):
        msg = f"expected a positive finite number such as 1e308, got {value!r}"
        raise ValueError(msg)
    return number


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in allowed:
            msg = f"expected one of {', '.join(allowed)}, got {value!r}"
            raise ValueError(msg)
        return value

    return parse


def _setting(default: T, parse: Callable[[str], T], doc: str, *, secret: bool = False) -> Any:
    """A dataclass field carrying its parser and documentation in metadata.

    A ``secret`` is left out of the object's repr, so that logging the
    settings never prints it.
    """
    return field(default=default, repr=not secret, metadata={"parse": parse, "doc": doc})


def _webhook_secret(value: str) -> str:
    from geobus.signing import parse_secret

    parse_secret(value)
    return value


def _webhook_secrets(value: str) -> tuple[str, ...]:
    """Comma- or space-separated ``whsec_…`` secrets (several while one rotates)."""
    secrets = tuple(part for part in re.split(r"[\s,]+", value) if part)
    for secret in secrets:
        _webhook_secret(secret)  # its message never echoes the secret
    return secrets


def _byte_count(value: str) -> int:
    """A positive number of bytes, optionally with a binary suffix: 512KiB, 1MiB, 2GiB."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]iB)?\s*", value)
    if match is None or int(match[1]) <= 0:
        msg = f"expected a positive number of bytes (optionally KiB, MiB or GiB), got {value!r}"
        raise ValueError(msg)
    scale = {None: 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}[match[2]]
    return int(match[1]) * scale


def _admin_token(value: str) -> str:
    # The message must never echo the value: it is a secret.
    if len(value) < ADMIN_TOKEN_MIN or not _TOKEN_RE.fullmatch(value):
        msg = (
            f"expected at least {ADMIN_TOKEN_MIN} characters of A-Z a-z 0-9 - . _ ~ + / ="
            f" (an RFC 6750 bearer token, e.g. from `openssl rand -hex 32`);"
            f" got {len(value)} characters"
        )
        raise ValueError(msg)
    return value


def _networks(value: str) -> tuple[IPv4Network | IPv6Network, ...]:
    from geobus.outbound import parse_networks

    return parse_networks(value)


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of geobus; see the README's configuration table."""

    amqp_url: str = _setting(
        "amqp://guest:guest@127.0.0.1:5672/",
        _amqp_url,
        "RabbitMQ URL (amqp:// or amqps://)",
        secret=True,  # it may hold a password
    )
    database_url: str = _setting(
        "geobus.gpkg",
        _database_url,
        "Store: postgresql://… for PostGIS, or a GeoPackage file path (*.gpkg)",
        secret=True,  # it may hold a password
    )
    prefix: str = _setting(
        "geobus", _prefix, "Prefix of every exchange and queue name (tenants and tests)"
    )
    declare_topology: bool = _setting(
        True,
        _boolean,
        "Each service declares the exchanges and queues at start-up; false: it only checks"
        " (passively) that they exist, for least-privilege RabbitMQ users (run `geobus"
        " topology` once as a user that may configure them)",
    )
    target_crs: str = _setting("EPSG:4326", _crs, "CRS the features are stored in")
    http_host: str = _setting("127.0.0.1", str, "Address the ingress listens on")
    http_port: int = _setting(8080, _port, "Port the ingress listens on")
    webhook_secrets: tuple[str, ...] = _setting(
        _NO_SECRETS,
        _webhook_secrets,
        "Standard Webhooks secrets (whsec_…, comma- or space-separated; several while one"
        " rotates) that POST /v1/features requests must be signed with; unset: unsigned requests"
        " are accepted, and only on a loopback address unless GEOBUS_ALLOW_UNSIGNED is set",
        secret=True,
    )
    webhook_tolerance: int = _setting(
        300,
        _positive_int,
        "Seconds a signed request's webhook-timestamp may be away from the ingress's clock",
    )
    allow_unsigned: bool = _setting(
        False,
        _boolean,
        "Let the ingress listen on a non-loopback address without GEOBUS_WEBHOOK_SECRETS"
        " (anyone who reaches it can submit jobs)",
    )
    max_body_bytes: int = _setting(
        1024**3,
        _byte_count,
        "Largest request body the ingress takes, as sent (413 from Content-Length before"
        " reading, or as soon as a streamed body passes it); e.g. 1GiB",
    )
    body_idle_timeout: float = _setting(
        60.0,
        _seconds,
        "Seconds the ingress waits for the next piece of a request body before it gives up"
        " with 408 (a client that stalls, or sends a byte a minute, cannot hold an upload"
        " open); 0 waits forever",
    )
    max_document_bytes: int = _setting(
        2 * 1024**3,
        _byte_count,
        "Largest document once its Content-Encoding is removed, counted while it streams (a"
        " gzip bomb is cut off with 413 as soon as it passes it)",
    )
    callback_secret: str = _setting(
        "",
        _webhook_secret,
        "Standard Webhooks secret (whsec_…) that signs outgoing job callbacks; unset: unsigned",
        secret=True,
    )
    callback_allow: tuple[IPv4Network | IPv6Network, ...] = _setting(
        _NO_NETWORKS,
        _networks,
        "Networks (comma-separated CIDRs) callbacks may reach although they are not public,"
        " e.g. 10.20.0.0/16; by default only globally routable addresses are called",
    )
    # A Path is immutable: sharing the default between instances is safe.
    spool_dir: Path = _setting(  # noqa: RUF009
        Path("spool"),
        Path,
        "Directory where accepted documents are spooled (fsynced)",
    )
    batch_max_features: int = _setting(
        5000, _positive_int, "Most features in one FeatureBatch message"
    )
    batch_max_bytes: int = _setting(
        4 * 1024 * 1024,
        _positive_int,
        "Target size of one FeatureBatch message in bytes (a batch is cut before it grows past it)",
    )
    max_message_bytes: int = _setting(
        16 * 1024 * 1024,
        _positive_int,
        "Largest message geobus publishes; a single feature larger than this is rejected"
        " (RabbitMQ 4.x refuses messages over 16 MiB by default)",
    )
    max_features: int = _setting(
        1_000_000,
        _positive_int,
        "Most features in one document: conversion stops at the limit and the job fails"
        " (document_too_many_features); the features before it are processed",
    )
    max_feature_bytes: int = _setting(
        64 * 1024 * 1024,
        _positive_int,
        "Largest JSON text of one feature; a larger one is skipped while it streams (never held"
        " in memory) and rejected (feature_too_large); a single Feature or Geometry document"
        " that large fails the job",
    )
    max_vertices_per_feature: int = _setting(
        1_000_000,
        _positive_int,
        "Most positions in one feature's geometry; more: the feature is rejected"
        " (too_many_vertices) before its geometry is parsed",
    )
    max_nesting_depth: int = _setting(
        64,
        _positive_int,
        "Deepest nesting of arrays and objects in a feature (the feature object is level 1);"
        " deeper: rejected (nested_too_deeply); at the document's top level: the job fails"
        " (document_too_deep)",
    )
    max_properties_bytes: int = _setting(
        1024 * 1024,
        _positive_int,
        'Largest JSON text of one feature\'s "properties"; larger: rejected (properties_too_large)',
    )
    max_string_bytes: int = _setting(
        256 * 1024,
        _positive_int,
        'Longest string (key or value, bytes of its JSON text) in "properties" or "id"; longer:'
        " rejected (string_too_long)",
    )
    max_number_magnitude: float = _setting(
        1.7976931348623157e308,
        _magnitude,
        'Largest absolute value of a number in "properties" or "id" (default: the largest'
        " double); beyond it, or with an exponent beyond ±400, or written with more than 400"
        " characters: rejected (number_out_of_range)",
    )
    repair: str = _setting(
        "make_valid",
        _choice("make_valid", "reject"),
        "What the validator does with invalid geometry",
    )
    delivery_limit: int = _setting(
        10,
        _positive_int,
        "Deliveries of one message a stage queue allows before dead-lettering it"
        " (a consumer that crashes mid-message spends one); all processes must agree",
    )
    stage_workers: int = _setting(
        2,
        _workers,
        "Worker processes per validator/reprojector process, where a crash or hang of GEOS/PROJ"
        " is contained; 0 runs the work in threads of the stage process (no containment)",
    )
    batch_timeout_s: float = _setting(
        120.0,
        _time_limit,
        "Seconds a worker process may spend on one batch before it is killed and the batch"
        " bisected to find the feature that hangs",
    )
    max_attempts: int = _setting(
        6,
        _positive_int,
        "Attempts at a message failing transiently (database or broker away) before it is"
        " dead-lettered",
    )
    retry_delays: tuple[float, ...] = _setting(
        _RETRY_DELAYS,
        _delays,
        "Seconds before the 1st, 2nd, … retry of a transient failure, comma-separated (the"
        " last repeats; jitter shortens each by up to a fifth); all processes must agree",
    )
    antimeridian: str = _setting(
        "cut",
        _choice("cut", "reject", "off"),
        "What the validator does with a WGS 84 ring or line crossing the antimeridian: cut it"
        " along ±180° (RFC 7946 §3.1.9), reject it, or leave it as it is",
    )
    clip: str = _setting(
        "cut",
        _choice("cut", "reject"),
        "What the reprojector does with geometry beyond the target CRS's area of use (EPSG:3857"
        " beyond ±85.06°): cut the outside part away (counted), or reject the feature",
    )
    explode_collections: bool = _setting(
        False,
        _boolean,
        "Turn a GeometryCollection whose members are all of one kind into the matching Multi*"
        " geometry (mixed collections stay collections)",
    )
    precision: int | None = _setting(
        None,
        _digits,
        "Decimal digits coordinates are snapped to (Shapely set_precision, topology kept valid);"
        " unset keeps every coordinate exact",
    )
    max_queue_depth: int = _setting(
        1000,
        _positive_int,
        "Messages a stage queue may hold (ready, checked every second) before the ingress"
        " answers new documents with 503",
    )
    max_jobs_per_client: int = _setting(
        8,
        _positive_int,
        "Jobs one client may have accepted and not yet converted before the ingress answers 429",
    )
    client_header: str = _setting(
        "",
        str,
        "Request header naming the client for GEOBUS_MAX_JOBS_PER_CLIENT (its last"
        " comma-separated value, e.g. X-Forwarded-For set by a trusted proxy); unset: the"
        " remote address",
    )
    spool_max_bytes: int = _setting(
        8 * 1024**3,
        _positive_int,
        "Bytes the spool may hold (documents accepted and not yet converted, plus uploads in"
        " progress); a document that would cross it is answered with 503",
    )
    retry_after: int = _setting(
        5, _positive_int, "Seconds the ingress's 503 and 429 answers ask clients to wait"
    )
    batch_niceness: int = _setting(
        15,
        _niceness,
        "Added to the nice value of the stage services and of the ingress's conversion worker"
        " (0-19): on a busy machine their batch work yields the CPU to the ingress's event"
        " loop, which answers the 202s; 0 keeps them at the ingress's priority",
    )
    ingress_rt_priority: int = _setting(
        0,
        _rt_priority,
        "Real-time priority (SCHED_RR, 1-99) of the ingress's event-loop thread, which answers"
        " the 202s, and of the threads that make each job durable: they then run ahead of"
        " every ordinary thread on the host (needs CAP_SYS_NICE; refused, a warning and the"
        " ordinary priority); 0: off",
    )
    shutdown_drain: float = _setting(
        0.0,
        _seconds,
        "Seconds the ingress keeps answering (new documents with 503, /readyz with 503) after"
        " SIGTERM before it stops listening, so that a load balancer can take it out",
    )
    shutdown_timeout: float = _setting(
        30.0,
        _seconds,
        "Seconds the ingress waits at shutdown for conversions in flight; those still running"
        " then are stopped and resumed from the spool at the next start",
    )
    admin_token: str = _setting(
        "",
        _admin_token,
        "Bearer token of the admin endpoints (job listing, dead letters, replay): at least 32"
        " characters of A-Z a-z 0-9 - . _ ~ + / =; unset: the admin endpoints answer 403",
        secret=True,
    )
    admin_timeout: float = _setting(
        30.0,
        _time_limit,
        "Seconds an admin dead-letter request may spend on the broker (connecting, reading"
        " every dead letter, replaying) before it is answered with 503",
    )
    log_level: str = _setting(
        "INFO",
        _log_level,
        "Log level of every geobus process: DEBUG, INFO, WARNING, ERROR or CRITICAL",
    )
    log_format: str = _setting(
        "auto",
        _choice("auto", "json", "console"),
        "Log format: json (one JSON object per line), console (readable), or auto (console"
        " when stderr is a terminal, else json)",
    )
    metrics_port: int = _setting(
        0,
        _port_or_zero,
        "Port of a worker's Prometheus /metrics endpoint on GEOBUS_HTTP_HOST (0: none);"
        " `geobus up` gives its children this port + 1, + 2, ... (the ingress serves"
        " /metrics on its HTTP port)",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``GEOBUS_<NAME>`` variables.

        Raises ConfigurationError naming every bad variable at once.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        problems: list[str] = []
        for f in fields(cls):
            name = env_name(f.name)
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            try:
                values[f.name] = f.metadata["parse"](raw)
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
        if problems:
            raise ConfigurationError("invalid configuration:\n  " + "\n  ".join(problems))
        return cls(**values)

    @property
    def uses_postgis(self) -> bool:
        """True when the store is PostgreSQL/PostGIS rather than a GeoPackage file."""
        return self.database_url.startswith(("postgresql://", "postgres://"))


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, for logs and messages."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def env_name(field_name: str) -> str:
    """The variable that sets a field: ``batch_max_bytes`` → ``GEOBUS_BATCH_MAX_BYTES``."""
    return "GEOBUS_" + field_name.upper()


def documentation() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting, for the README's table."""
    return [(env_name(f.name), str(f.default), f.metadata["doc"]) for f in fields(Settings)]


def config_table() -> str:
    """The Markdown table of every setting, as the README shows it."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    rows += [f"| `{name}` | `{default}` | {doc} |" for name, default, doc in documentation()]
    return "\n".join(rows)
