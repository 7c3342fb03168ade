"""The reprojector stage: every geometry of a batch into the target CRS.

:class:`~geobus.reprojector.transform.Reprojector` is the pure transform; it
holds the cached ``pyproj.Transformer`` objects, so one is created per
process at start-up and passed to the consumer.
"""
