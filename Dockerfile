# syntax=docker/dockerfile:1
# geobus: one image for every service (the command picks the service):
#   geobus ingress | geobus worker validator|reprojector|writer | geobus topology
#
# Stage 1 builds the wheel; stage 2 installs only the wheel and its runtime
# dependencies into a slim image that runs as an unprivileged user.

FROM python:3.11-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir build==1.3.0
COPY pyproject.toml README.md ./
COPY services ./services
COPY gen ./gen
RUN python -m build --wheel --outdir /dist

FROM python:3.11-slim
# Shapely, pyproj and psycopg ship manylinux wheels with GEOS, PROJ and libpq
# inside: no system libraries to install.
COPY --from=build /dist/*.whl /tmp/
RUN pip install --no-cache-dir /tmp/*.whl \
    && rm /tmp/*.whl \
    && useradd --system --uid 10001 --home-dir /var/lib/geobus --create-home geobus \
    && mkdir -p /var/lib/geobus/spool \
    && chown -R geobus:geobus /var/lib/geobus
USER 10001:10001
WORKDIR /var/lib/geobus
ENV GEOBUS_SPOOL_DIR=/var/lib/geobus/spool \
    GEOBUS_HTTP_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
EXPOSE 8080
ENTRYPOINT ["geobus"]
CMD ["ingress"]
