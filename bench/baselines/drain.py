"""The acknowledgement floor: a bare Starlette endpoint that drains the body to /dev/null.

    python -m bench.baselines.drain --port PORT

Served by uvicorn exactly as the geobus ingress is (same HTTP parser, same
keep-alive), so the difference between the two times to ``202`` is what
geobus adds on top of receiving the bytes: spooling, fsync, job bookkeeping.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from geobus.ingress.server import http_implementation

DEV_NULL = Path("/dev/null")


async def drain(request: Request) -> Response:
    """Read every chunk of the body, write it to /dev/null, answer 202 with the size."""
    size = 0
    # Opening /dev/null never blocks; the ingress's spool file open is what blocks.
    with DEV_NULL.open("wb") as sink:  # noqa: ASYNC230
        async for chunk in request.stream():
            sink.write(chunk)
            size += len(chunk)
    return JSONResponse({"bytes": size}, status_code=202)


async def healthz(_request: Request) -> Response:
    """Readiness for the bench harness."""
    return JSONResponse({"status": "ok"})


def app() -> Starlette:
    """The drain application."""
    return Starlette(
        routes=[
            Route("/v1/features", drain, methods=["POST"]),
            Route("/readyz", healthz),
            Route("/healthz", healthz),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    """Serve the drain endpoint on 127.0.0.1:PORT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvicorn.run(
        app(),
        host="127.0.0.1",
        port=args.port,
        http=http_implementation(),
        lifespan="off",
        access_log=False,
        log_level="warning",
        timeout_keep_alive=30,
    )


if __name__ == "__main__":
    main()
