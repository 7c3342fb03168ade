"""The one error tree of geobus.

Every error geobus raises on purpose derives from :class:`GeobusError`.
Third-party errors (aio-pika, psycopg, GEOS, PROJ) are translated into this
tree where they enter geobus, so that the code deciding what happens next
(answer an HTTP status, reject a feature, retry, dead-letter) looks at one
hierarchy::

    GeobusError
    ├── ConfigurationError      bad GEOBUS_* setting: fail at start-up
    ├── PermanentError          retrying cannot help → reject / dead-letter
    │   ├── DocumentError       the submitted document as a whole is unusable
    │   └── MessageError        an AMQP message cannot be decoded or is unknown
    └── TransientError          a dependency is away → retry with backoff

A single bad *feature* is not an exception: it is data (a
``geobus.v1.Rejection``) and the rest of the batch goes on.
"""

from __future__ import annotations


class GeobusError(Exception):
    """Base of every error geobus raises on purpose."""


class ConfigurationError(GeobusError):
    """A setting is missing or has a value geobus cannot use."""


class PermanentError(GeobusError):
    """Processing failed in a way that retrying will not fix."""


class DocumentError(PermanentError):
    """The submitted document cannot be read at all (not JSON, not GeoJSON).

    ``code`` is a short machine-readable code (``document_not_json``, ...),
    ``offset`` the byte offset in the document where reading stopped, when known.
    """

    def __init__(self, code: str, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.offset = offset


class MessageError(PermanentError):
    """An AMQP message that no stage can process (undecodable, unknown type)."""


class TransientError(GeobusError):
    """A dependency (broker, database) is unavailable; the work may succeed later."""
