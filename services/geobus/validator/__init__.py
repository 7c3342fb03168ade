"""The validator stage: WGS 84 range, OGC validity (repair or reject) and RFC 7946 ring orientation.

:func:`~geobus.validator.transform.validate` is the pure transform; the
consumer that feeds it from ``feature.ingested`` lives beside it.
"""
