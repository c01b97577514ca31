// A direct subscriber as a consumer writes it with the official clients: connect with the .creds file and the
// subscription's inbox prefix, get its durable consumer with the JetStream API prefix, fetch, ack.
// Usage: node subscriber.mjs <server url> <creds file> <grant id> <stream> <count>
// Prints one JSON line: {"ids": [...]} or {"error": "..."}; exit 0 once <count> statements were acked.
import { readFileSync } from "node:fs";
import * as legacy from "nats";
import * as split from "@nats-io/transport-node";
import { jetstream } from "@nats-io/jetstream";

const [server, credsFile, grantId, stream, count] = process.argv.slice(2);
const want = Number(count);
// RTHUB_JS_SPLIT=1: the split packages (@nats-io/transport-node + @nats-io/jetstream 3.x); else nats 2.x alone.
const lib = process.env.RTHUB_JS_SPLIT ? split : legacy;
const nc = await lib.connect({
  servers: server,
  authenticator: lib.credsAuthenticator(readFileSync(credsFile)),
  inboxPrefix: `_INBOX_c_${grantId}`,
  maxReconnectAttempts: 0,
});
try {
  const js = process.env.RTHUB_JS_SPLIT ? jetstream(nc, { apiPrefix: "JS.rthub.API" })
    : nc.jetstream({ apiPrefix: "JS.rthub.API" });
  const consumer = await js.consumers.get(stream, `rthub_${grantId}`);
  const info = await consumer.info();
  const ids = [];
  const deadline = Date.now() + 20000;
  while (ids.length < want && Date.now() < deadline) {
    const batch = await consumer.fetch({ max_messages: want - ids.length, expires: 2000 });
    for await (const m of batch) {
      ids.push(JSON.parse(new TextDecoder().decode(m.data)).id);
      m.ack();
    }
  }
  await nc.flush();
  console.log(JSON.stringify({ consumer: info.name, ids }));
  process.exitCode = ids.length >= want ? 0 : 1;
} catch (err) {
  console.log(JSON.stringify({ error: String(err && err.message ? err.message : err) }));
  process.exitCode = 2;
} finally {
  await nc.close();
}
