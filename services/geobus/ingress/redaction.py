"""Client-supplied URLs as logs and problem documents may show them.

A ``callback_url`` may carry credentials (``https://user:password@host/``) or
a token in its query (``?token=…``). The store keeps the real URL (the writer
calls it); anything a person or a client reads gets :func:`redact_url`.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit, urlunsplit

MASK = "***"


def redact_url(url: str) -> str:
    """``url`` without user information, query values or fragment: each becomes ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    # Every query value: which parameter names hold secrets is up to the client;
    # a part without "=" may be a bare token and goes whole.
    query = "&".join(
        f"{part.partition('=')[0]}={MASK}" if "=" in part else MASK
        for part in parts.query.split("&")
        if part
    )
    fragment = MASK if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def redact_target(target: str) -> str:
    """A request target (``/path?query``) with every query value masked."""
    path, mark, query = target.partition("?")
    return f"{path}?{redact_url('http://h/?' + query).partition('?')[2]}" if mark else path


class AccessLogFilter(logging.Filter):
    """Masks the query values of uvicorn's access log lines (``?callback_url=…``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the request target argument; never drop the line."""
        args = record.args
        # uvicorn: (client, method, path with query, HTTP version, status)
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record.args = (args[0], args[1], redact_target(args[2]), args[3], args[4])
        return True
