"""The SQL that makes a SQLite file an OGC GeoPackage 1.4 holding geobus's tables.

Core tables and required rows follow OGC 12-128r18 §1.1 and §2.1; feature
tables carry the RTree spatial index extension (§F.3) with the 1.4 triggers.
The ledger tables are GeoPackage *attributes* tables (no geometry), prefixed
``geobus_`` because every table of a GeoPackage shares one namespace.

The file declares GeoPackage 1.3 (``user_version`` 10300), not 1.4: GDAL
3.6 (Debian 12, and the QGIS built on it) warns that a 1.4 file "may only be
partially supported", and nothing geobus writes needs 1.4. The RTree
triggers are the 1.4 ones (``update6``/``update7`` instead of ``update1``/
``update3``), which fix an UPSERT problem of the older set and which GDAL
itself writes into files of every version since 3.7.
"""

# ruff: noqa: S608  -- SQL is built only with checked identifiers (check_identifier); values are bound.

from __future__ import annotations

from pyproj import CRS

APPLICATION_ID = 0x47504B47  # "GPKG"
USER_VERSION = 10300  # GeoPackage 1.3: see the module docstring
RTREE_EXTENSION = "http://www.geopackage.org/spec120/#extension_rtree"

CORE = (
    """CREATE TABLE IF NOT EXISTS gpkg_spatial_ref_sys (
        srs_name TEXT NOT NULL, srs_id INTEGER NOT NULL PRIMARY KEY,
        organization TEXT NOT NULL, organization_coordsys_id INTEGER NOT NULL,
        definition TEXT NOT NULL, description TEXT)""",
    """CREATE TABLE IF NOT EXISTS gpkg_contents (
        table_name TEXT NOT NULL PRIMARY KEY, data_type TEXT NOT NULL,
        identifier TEXT UNIQUE, description TEXT DEFAULT '',
        last_change DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
        min_x DOUBLE, min_y DOUBLE, max_x DOUBLE, max_y DOUBLE, srs_id INTEGER,
        CONSTRAINT fk_gc_r_srs_id FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys(srs_id))""",
    """CREATE TABLE IF NOT EXISTS gpkg_geometry_columns (
        table_name TEXT NOT NULL, column_name TEXT NOT NULL,
        geometry_type_name TEXT NOT NULL, srs_id INTEGER NOT NULL,
        z TINYINT NOT NULL, m TINYINT NOT NULL,
        CONSTRAINT pk_geom_cols PRIMARY KEY (table_name, column_name),
        CONSTRAINT uk_gc_table_name UNIQUE (table_name),
        CONSTRAINT fk_gc_tn FOREIGN KEY (table_name) REFERENCES gpkg_contents(table_name),
        CONSTRAINT fk_gc_srs FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys (srs_id))""",
    """CREATE TABLE IF NOT EXISTS gpkg_extensions (
        table_name TEXT, column_name TEXT, extension_name TEXT NOT NULL,
        definition TEXT NOT NULL, scope TEXT NOT NULL,
        CONSTRAINT ge_tce UNIQUE (table_name, column_name, extension_name))""",
)

LEDGER = {
    "geobus_jobs": """CREATE TABLE IF NOT EXISTS geobus_jobs (
        fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
        job_id TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL,
        collection TEXT NOT NULL,
        created DATETIME NOT NULL,
        started DATETIME,
        finished DATETIME,
        updated DATETIME NOT NULL,
        source_uri TEXT NOT NULL,
        media_type TEXT NOT NULL,
        document_bytes INTEGER NOT NULL,
        callback_url TEXT,
        features_total INTEGER,
        batches_total INTEGER,
        message TEXT,
        code TEXT,
        warnings TEXT)""",
    "geobus_batches": """CREATE TABLE IF NOT EXISTS geobus_batches (
        fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
        job_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        stored INTEGER NOT NULL DEFAULT 0,
        repaired INTEGER NOT NULL DEFAULT 0,
        rejected INTEGER NOT NULL DEFAULT 0,
        adjusted TEXT,
        written_at DATETIME NOT NULL,
        UNIQUE (job_id, kind, sequence))""",
    "geobus_rejections": """CREATE TABLE IF NOT EXISTS geobus_rejections (
        fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
        job_id TEXT NOT NULL,
        feature_index INTEGER NOT NULL,
        feature_id TEXT,
        stage TEXT NOT NULL,
        reason TEXT NOT NULL,
        message TEXT NOT NULL,
        json_pointer TEXT NOT NULL,
        coordinate TEXT NOT NULL,
        rejected_at DATETIME NOT NULL,
        UNIQUE (job_id, feature_index, stage))""",
}


def srs_rows(srid: int) -> list[tuple[str, int, str, int, str, str]]:
    """The rows gpkg_spatial_ref_sys must hold (-1, 0, 4326) plus the target SRID's."""
    rows = [
        (
            "Undefined Cartesian SRS",
            -1,
            "NONE",
            -1,
            "undefined",
            "undefined Cartesian coordinate reference system",
        ),
        (
            "Undefined geographic SRS",
            0,
            "NONE",
            0,
            "undefined",
            "undefined geographic coordinate reference system",
        ),
        (
            "WGS 84 geodetic",
            4326,
            "EPSG",
            4326,
            CRS.from_epsg(4326).to_wkt("WKT1_GDAL"),
            "longitude/latitude coordinates in decimal degrees on the WGS 84 spheroid",
        ),
    ]
    if srid not in (-1, 0, 4326):
        crs = CRS.from_epsg(srid)
        rows.append((crs.name, srid, "EPSG", srid, crs.to_wkt("WKT1_GDAL"), crs.name))
    return rows


def feature_table(table: str) -> str:
    """DDL of a collection's features table (``table`` already checked)."""
    return f"""CREATE TABLE IF NOT EXISTS "{table}" (
        fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
        geom GEOMETRY,
        job_id TEXT NOT NULL,
        feature_index INTEGER NOT NULL,
        feature_id TEXT,
        properties TEXT,
        adjustments TEXT,
        stored_at DATETIME NOT NULL,
        UNIQUE (job_id, feature_index))"""


def rtree_insert_trigger(table: str) -> tuple[str, str]:
    """(name, DDL) of the RTree insert trigger of ``table``'s ``geom`` column."""
    return f"rtree_{table}_geom_insert", rtree(table)[1]


def rtree(table: str, column: str = "geom", pk: str = "fid") -> list[str]:
    """The RTree index of ``table.column`` and its GeoPackage 1.4 triggers."""
    t, c, i = table, column, pk
    r = f"rtree_{t}_{c}"
    values = (
        f'NEW."{i}", ST_MinX(NEW."{c}"), ST_MaxX(NEW."{c}"), ST_MinY(NEW."{c}"), ST_MaxY(NEW."{c}")'
    )
    new_full = f'(NEW."{c}" NOTNULL AND NOT ST_IsEmpty(NEW."{c}"))'
    new_none = f'(NEW."{c}" ISNULL OR ST_IsEmpty(NEW."{c}"))'
    old_full = f'(OLD."{c}" NOTNULL AND NOT ST_IsEmpty(OLD."{c}"))'
    old_none = f'(OLD."{c}" ISNULL OR ST_IsEmpty(OLD."{c}"))'
    same = f'OLD."{i}" = NEW."{i}"'
    moved = f'OLD."{i}" != NEW."{i}"'
    return [
        f'CREATE VIRTUAL TABLE IF NOT EXISTS "{r}" USING rtree(id, minx, maxx, miny, maxy)',
        f'''CREATE TRIGGER IF NOT EXISTS "{r}_insert" AFTER INSERT ON "{t}"
            WHEN {new_full}
            BEGIN INSERT OR REPLACE INTO "{r}" VALUES ({values}); END''',
        f'''CREATE TRIGGER IF NOT EXISTS "{r}_update6" AFTER UPDATE OF "{c}" ON "{t}"
            WHEN {same} AND {new_full} AND {old_full}
            BEGIN UPDATE "{r}" SET minx = ST_MinX(NEW."{c}"), maxx = ST_MaxX(NEW."{c}"),
                miny = ST_MinY(NEW."{c}"), maxy = ST_MaxY(NEW."{c}") WHERE id = NEW."{i}"; END''',
        f'''CREATE TRIGGER IF NOT EXISTS "{r}_update7" AFTER UPDATE OF "{c}" ON "{t}"
            WHEN {same} AND {new_full} AND {old_none}
            BEGIN INSERT INTO "{r}" VALUES ({values}); END''',
        f'''CREATE TRIGGER IF NOT EXISTS "{r}_update2" AFTER UPDATE OF "{c}" ON "{t}"
            WHEN {same} AND {new_none}
            BEGIN DELETE FROM "{r}" WHERE id = OLD."{i}"; END''',
        f'''CREATE TRIGGER IF NOT EXISTS "{r}_update5" AFTER UPDATE ON "{t}"
            WHEN {moved} AND {new_full}
            BEGIN DELETE FROM "{r}" WHERE id = OLD."{i}";
                INSERT OR REPLACE INTO "{r}" VALUES ({values}); END''',
        f'''CREATE TRIGGER IF NOT EXISTS "{r}_update4" AFTER UPDATE ON "{t}"
            WHEN {moved} AND {new_none}
            BEGIN DELETE FROM "{r}" WHERE id IN (OLD."{i}", NEW."{i}"); END''',
        f'''CREATE TRIGGER IF NOT EXISTS "{r}_delete" AFTER DELETE ON "{t}"
            WHEN OLD."{c}" NOT NULL
            BEGIN DELETE FROM "{r}" WHERE id = OLD."{i}"; END''',
    ]
