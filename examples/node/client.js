// Calls audit-gateway's three methods once each: GetSince (one page), StreamSince (cut by
// max_records, then resumed from the last resume_token) and Follow (from a few minutes
// back). Prints one summary line per method; exits non-zero on any failure.
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

/** Collects a server stream's messages; rejects on its error status. */
function collect(call) {
  return new Promise((resolve, reject) => {
    const messages = [];
    call.on('data', (m) => messages.push(m));
    call.on('error', reject);
    call.on('end', () => resolve(messages));
  });
}

/**
 * One StreamSince call over the last hour (after `token` when set); adds each record's
 * identity to `seen`, failing on a repeat. Resolves to [records, last resume_token].
 */
async function stream(client, seen, token = '') {
  const request = {
    number: 1, units: 'TIME_UNIT_HOURS', page_size: PAGE_SIZE, max_records: MAX_RECORDS,
    resume_token: token,
  };
  const messages = await collect(client.StreamSince(request, { deadline: deadline() }));
  let count = 0;
  for (const message of messages) {
    for (const record of message.records) {
      const key = `${record.creation_date}/${record.summary}`;
      if (seen.has(key)) throw new Error(`StreamSince: record repeated: ${key}`);
      seen.add(key);
      count += 1;
    }
    token = message.resume_token;
  }
  if (count !== MAX_RECORDS) throw new Error(`StreamSince: ${count} records, want ${MAX_RECORDS}`);
  return [count, token];
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

    // Cut at MAX_RECORDS, then resumed from the last token with the same filters.
    const seen = new Set();
    const [first, token] = await stream(client, seen);
    const [resumed] = await stream(client, seen, token);
    console.log(`StreamSince: ${first} records, resumed: ${resumed} more, no repeats`);

    // From five minutes back, polling every second; ends with OK after FOLLOW_MAX records.
    const since = Math.floor(Date.now() / 1000) - 300;
    const messages = await collect(client.Follow({
      since: { seconds: since }, poll_interval: { seconds: 1 }, max_records: FOLLOW_MAX,
    }, { deadline: deadline() }));
    const dates = messages.flatMap((m) => m.records.map((r) => BigInt(r.creation_date)));
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
