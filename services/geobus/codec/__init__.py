"""GeoJSON ⇄ ``geobus.v1`` feature batches.

- :mod:`geobus.codec.scanner` slices a streamed document into raw feature texts;
- :mod:`geobus.codec.features` reads one raw feature (id, properties, bbox);
- :mod:`geobus.codec.structure` explains why a geometry is structurally wrong;
- :mod:`geobus.codec.batches` turns raw features into FeatureBatch messages;
- :mod:`geobus.codec.geojson` turns FeatureBatch messages back into GeoJSON.
"""
