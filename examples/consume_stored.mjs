// Consume geobus's feature.stored events from Node.js with only the .proto files.
//
//   npm install amqplib protobufjs
//   node examples/consume_stored.mjs [prefix]
//
// The same contract as examples/consume_stored.py: bind a private queue to
// <prefix>.features with routing key feature.stored and decode each message
// as geobus.v1.FeatureBatch. Geometries are ISO WKB (little-endian doubles).
import amqp from "amqplib";
import protobuf from "protobufjs";

const prefix = process.argv[2] ?? "geobus";
const root = new protobuf.Root();
root.resolvePath = (_origin, target) => new URL(`../proto/${target}`, import.meta.url).pathname;
await root.load("geobus/v1/feature.proto", { keepCase: true });
const FeatureBatch = root.lookupType("geobus.v1.FeatureBatch");

const connection = await amqp.connect("amqp://guest:guest@127.0.0.1:5672/");
const channel = await connection.createChannel();
const { queue } = await channel.assertQueue("", { exclusive: true });
await channel.bindQueue(queue, `${prefix}.features`, "feature.stored");
console.log("listening");
await channel.consume(queue, (message) => {
  const batch = FeatureBatch.decode(message.content);
  console.log(`job ${batch.job_id} batch ${batch.sequence}: ${batch.features.length} features in ${batch.crs}`);
  for (const feature of batch.features) {
    const wkb = feature.geometry;
    // Byte 0 is the byte order, bytes 1-4 the ISO geometry type code.
    const type = wkb.length ? new DataView(wkb.buffer, wkb.byteOffset).getUint32(1, true) : null;
    const properties = feature.properties.length ? JSON.parse(Buffer.from(feature.properties)) : null;
    console.log(`  #${feature.index} wkb type ${type}`, properties);
  }
  channel.ack(message);
});
