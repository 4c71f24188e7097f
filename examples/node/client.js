// Calls audit-gateway's three methods once each: GetSince (one page), StreamSince (cut by
// max_records, then resumed from the last resume_token) and Follow (from a few minutes
// back). Prints one summary line per method, and one more when the page held values the
// gateway sent as JSON text (json_text_paths); exits non-zero on any failure. Streams and
// followers that end with UNAVAILABLE (a gateway restarting) resume from their last token
// or checkpoint, a few times.
//
// Usage: node client.js [--addr HOST:PORT]   (default $AUDIT_GATEWAY_ADDR or 127.0.0.1:50051)
'use strict';

const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PAGE_SIZE = 25; // records per StreamSince message
const MAX_RECORDS = 60; // records per StreamSince call, and the resumed call
const FOLLOW_MAX = 20; // records to follow before Follow ends with OK
const ATTEMPTS = 5; // calls of a stream or follower ended by UNAVAILABLE, the first included

// The .proto is loaded at run time: no generated code. int64 fields come as strings
// (longs: String), enums by name, fields by their .proto names (keepCase).
const definition = protoLoader.loadSync('confluence/audit/v1/audit.proto', {
  includeDirs: [path.join(__dirname, '..', '..', 'proto')],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const { AuditService } = grpc.loadPackageDefinition(definition).confluence.audit.v1;

/** A deadline `seconds` from now. */
const deadline = (seconds = 30) => new Date(Date.now() + seconds * 1000);

/**
 * Hands each message of the stream `call()` starts to `onMessage`, calling it again (it
 * reads the caller's last token or checkpoint) when the stream ends with UNAVAILABLE, up
 * to ATTEMPTS calls in all.
 */
async function resuming(call, onMessage) {
  for (let attempt = 0; ; attempt += 1) {
    try {
      return await new Promise((resolve, reject) => {
        const stream = call();
        stream.on('data', (m) => { try { onMessage(m); } catch (e) { stream.cancel(); reject(e); } });
        stream.on('error', reject);
        stream.on('end', resolve);
      });
    } catch (err) {
      if (err.code !== grpc.status.UNAVAILABLE || attempt === ATTEMPTS - 1) throw err;
      await new Promise((r) => setTimeout(r, 200 * 2 ** attempt));
    }
  }
}

/**
 * StreamSince over the last hour (after `token` when set) until MAX_RECORDS records; adds
 * each record's identity to `seen`, failing on a repeat. Resolves to [records, last
 * resume_token].
 */
async function stream(client, seen, token = '') {
  let count = 0;
  // From the last token received, for what is still wanted.
  const call = () => client.StreamSince({
    number: 1, units: 'TIME_UNIT_HOURS', page_size: PAGE_SIZE, max_records: MAX_RECORDS - count,
    resume_token: token,
  }, { deadline: deadline() });
  await resuming(call, (message) => {
    for (const record of message.records) {
      const key = `${record.creation_date}/${record.summary}`;
      if (seen.has(key)) throw new Error(`StreamSince: record repeated: ${key}`);
      seen.add(key);
      count += 1;
    }
    token = message.resume_token;
  });
  if (count !== MAX_RECORDS) throw new Error(`StreamSince: ${count} records, want ${MAX_RECORDS}`);
  return [count, token];
}

/** A google.protobuf.Value (as proto-loader decodes it) as plain JSON. */
function plain(value) {
  switch (value.kind) {
    case 'structValue': return plainStruct(value.structValue);
    case 'listValue': return value.listValue.values.map(plain);
    case 'nullValue': return null;
    default: return value[value.kind];
  }
}

/** A google.protobuf.Struct as a plain object. */
function plainStruct(struct) {
  return Object.fromEntries(Object.entries(struct?.fields ?? {}).map(([k, v]) => [k, plain(v)]));
}

/**
 * A record's unknown_fields as a plain object, with each value the gateway sent as JSON
 * text (too deep for protobuf, listed in json_text_paths as JSON Pointers) parsed back.
 */
function unknownFields(record) {
  const fields = plainStruct(record.unknown_fields);
  for (const path of record.json_text_paths) {
    const keys = path.split('/').slice(1).map((k) => k.replaceAll('~1', '/').replaceAll('~0', '~'));
    if (!Object.hasOwn(fields, keys[0])) continue; // in a typed field, such as /author/operations/...
    const parent = keys.slice(0, -1).reduce((node, key) => node[key], fields);
    parent[keys.at(-1)] = JSON.parse(parent[keys.at(-1)]);
  }
  return fields;
}

/** [levels, innermost value] of the deepest path through a JSON value. */
function deepest(value) {
  if (value === null || typeof value !== 'object') return [0, value];
  const children = Object.values(value).map(deepest);
  const [levels, innermost] = children.reduce((best, d) => (d[0] > best[0] ? d : best),
    children[0] ?? [0, null]);
  return [levels + 1, innermost];
}

async function main() {
  const { values } = parseArgs({
    options: { addr: { type: 'string', default: process.env.AUDIT_GATEWAY_ADDR || '127.0.0.1:50051' } },
  });
  // Plain-text HTTP/2; use grpc.credentials.createSsl() for a TLS gateway.
  const client = new AuditService(values.addr, grpc.credentials.createInsecure());
  try {
    const page = await new Promise((resolve, reject) => {
      client.GetSince({ number: 1, units: 'TIME_UNIT_HOURS', limit: 100 }, { deadline: deadline() },
        (err, response) => (err ? reject(err) : resolve(response)));
    });
    console.log(`GetSince: ${page.results.length} records`);
    const deep = page.results.filter((r) => r.json_text_paths.length > 0);
    if (deep.length > 0) {
      const fields = unknownFields(deep[0]);
      const key = Object.keys(fields).reduce(
        (best, k) => (best === undefined || deepest(fields[k])[0] > deepest(fields[best])[0] ? k : best),
        undefined,
      );
      const [levels, innermost] = deepest(fields[key] ?? null);
      console.log(`JSON text restored in ${deep.length} records; the first's deepest unknown `
        + `field: ${key}, ${levels} levels, innermost ${JSON.stringify(innermost)}`);
    }

    // Cut at MAX_RECORDS, then resumed from the last token with the same filters.
    const seen = new Set();
    const [first, token] = await stream(client, seen);
    const [resumed] = await stream(client, seen, token);
    console.log(`StreamSince: ${first} records, resumed: ${resumed} more, no repeats`);

    // From five minutes back, polling every second; ends with OK after FOLLOW_MAX records.
    // Resumed from the last checkpoint (which a shipper would store) on UNAVAILABLE.
    const since = Math.floor(Date.now() / 1000) - 300;
    const dates = [];
    let checkpoint = '';
    await resuming(() => client.Follow({
      ...(checkpoint ? { checkpoint } : { since: { seconds: since } }),
      poll_interval: { seconds: 1 }, max_records: FOLLOW_MAX - dates.length,
    }, { deadline: deadline() }), (message) => {
      dates.push(...message.records.map((r) => BigInt(r.creation_date)));
      checkpoint = message.checkpoint;
    });
    if (dates.length !== FOLLOW_MAX || dates.some((d, i) => i > 0 && d < dates[i - 1])) {
      throw new Error(`Follow: ${dates.length} records, want ${FOLLOW_MAX} oldest first`);
    }
    console.log(`Follow: ${dates.length} records, oldest first`);
  } finally {
    client.close();
  }
}

main().catch((err) => {
  console.error(`error: ${err.message}`);
  process.exit(1);
});
