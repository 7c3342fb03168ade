"""Where geobus keeps features, rejections and the job ledger.

:func:`open_store` picks the backend from the settings: PostGIS for a
``postgresql://`` database URL, else a GeoPackage file. Both implement
:class:`~geobus.store.base.FeatureStore`.
"""

from __future__ import annotations

from geobus.errors import ConfigurationError
from geobus.settings import Settings
from geobus.store.base import (
    FeatureStore,
    JobCounts,
    JobRecord,
    RejectionRecord,
    WriteOutcome,
    check_collection,
)

__all__ = [
    "FeatureStore",
    "JobCounts",
    "JobRecord",
    "RejectionRecord",
    "WriteOutcome",
    "check_collection",
    "open_store",
    "target_srid",
]


def target_srid(target_crs: str) -> int:
    """The EPSG code of the target CRS; ConfigurationError when it has none.

    Both PostGIS and GeoPackage identify a CRS by an SRID, so the target CRS
    must be an EPSG one.
    """
    from pyproj import CRS

    epsg = CRS.from_user_input(target_crs).to_epsg()
    if epsg is None:
        msg = f"GEOBUS_TARGET_CRS {target_crs!r} has no EPSG code; the store needs one"
        raise ConfigurationError(msg)
    return int(epsg)


def open_store(settings: Settings, schema: str = "geobus") -> FeatureStore:
    """The store the settings name (no connection is made until first use).

    ``schema`` is the PostGIS schema (tests pass a unique one); GeoPackage
    ignores it.
    """
    srid = target_srid(settings.target_crs)
    if settings.uses_postgis:
        from geobus.store.postgis import PostgisStore

        return PostgisStore(settings.database_url, srid, schema=schema)
    from geobus.store.geopackage import GeoPackageStore

    return GeoPackageStore(settings.database_url, srid)
