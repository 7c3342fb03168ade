"""``python -m geobus.ingress``: serve the ingress with settings from ``GEOBUS_*``."""

from __future__ import annotations

import sys

from geobus.errors import ConfigurationError
from geobus.ingress.server import serve
from geobus.settings import Settings


def main() -> int:
    """Serve until interrupted; exit 2 on bad configuration."""
    try:
        settings = Settings.from_env()
    except ConfigurationError as exc:
        print(f"geobus ingress: {exc}", file=sys.stderr)
        return 2
    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
