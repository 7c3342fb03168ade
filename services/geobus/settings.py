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
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


def _url(value: str, schemes: tuple[str, ...]) -> str:
    scheme = urlsplit(value).scheme
    if scheme not in schemes:
        msg = f"expected a URL with scheme {' or '.join(schemes)}, got {value!r}"
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
        msg = f"expected postgresql://… or a path ending in .gpkg, got {value!r}"
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


def _port(value: str) -> int:
    number = int(value)
    if not 0 < number < 65536:
        msg = f"expected a TCP port 1-65535, got {value!r}"
        raise ValueError(msg)
    return number


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
    target_crs: str = _setting("EPSG:4326", _crs, "CRS the features are stored in")
    http_host: str = _setting("127.0.0.1", str, "Address the ingress listens on")
    http_port: int = _setting(8080, _port, "Port the ingress listens on")
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
        2000, _positive_int, "Most features in one FeatureBatch message"
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
