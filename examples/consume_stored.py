"""Consume geobus's ``feature.stored`` events with nothing but the generated classes.

    python examples/consume_stored.py [--prefix geobus] [--amqp URL] [--batches N]

Binds a private queue to ``<prefix>.features`` with routing key
``feature.stored``, decodes each message as ``geobus.v1.FeatureBatch`` (the
AMQP ``type`` property names the message) and prints one line per batch and
per feature. Geometries are ISO WKB: any WKB reader works (Shapely here).
"""

from __future__ import annotations

import argparse
import asyncio
import json

import aio_pika
import shapely

from geobus.v1 import feature_pb2


async def main(amqp_url: str, prefix: str, batches: int | None) -> None:
    """Print stored features until interrupted (or after ``batches`` batches)."""
    connection = await aio_pika.connect_robust(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=8)
        queue = await channel.declare_queue(exclusive=True)  # gone when we disconnect
        await queue.bind(f"{prefix}.features", routing_key="feature.stored")
        print("listening", flush=True)
        seen = 0
        async with queue.iterator() as messages:
            async for message in messages:
                async with message.process():  # ack after the block succeeds
                    assert message.type == "geobus.v1.FeatureBatch", message.type
                    batch = feature_pb2.FeatureBatch.FromString(message.body)
                    print(
                        f"job {batch.job_id} batch {batch.sequence}: {len(batch.features)}"
                        f" features in {batch.crs} -> collection {batch.collection}",
                        flush=True,
                    )
                    for feature in batch.features:
                        geometry = shapely.from_wkb(feature.geometry) if feature.geometry else None
                        properties = json.loads(feature.properties) if feature.properties else None
                        kind = geometry.geom_type if geometry is not None else "null"
                        print(f"  #{feature.index} {kind} {properties}", flush=True)
                seen += 1
                if batches is not None and seen >= batches:
                    return


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--prefix", default="geobus")
    parser.add_argument("--batches", type=int, help="stop after this many batches")
    args = parser.parse_args()
    asyncio.run(main(args.amqp, args.prefix, args.batches))
