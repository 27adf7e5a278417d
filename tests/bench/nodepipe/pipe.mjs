// pipe.mjs — a peer of sbx's dispatch benchmark (tests/bench/bench.py): the
// pipeline sbx-worker is, written the straightforward Node way, so the bench
// shows what sbx's design buys over the obvious implementation.
//
// Same shape and guarantees as sbx, per job:
//   Kafka   kafkajs consumer (group GROUP on TOPIC, the very messages
//           `sbx enqueue` published for the sbx run), all partitions at once;
//   tx 1    the run row (queued) and its history row, one transaction;
//   lease   a Redis Lua script (ioredis): one build per project, a fencing
//           token from a counter; a busy project is retried after 1 ms;
//   build   a no-op, like sbx's bench provider;
//   tx 2    the run row to succeeded, fenced (only a newer token may write),
//           and the history rows of provisioning, running and succeeded;
//   release the lease (only by its holder), then, once every job of the batch
//           is durable, the batch's offset is committed.
// A batch's jobs run at once, except that one project's jobs (one partition,
// as the producer keys by project) run in their order, one after the other,
// rather than spin on their own project's lease.
// Client: kafkajs 2.2.4 (pure JavaScript, what issue 14 measured), ioredis,
// pg (node-postgres) with a pool of 20 connections.
//
// Usage: node pipe.mjs BROKERS TOPIC GROUP DATABASE_URL REDIS_URL
// Creates schema nodepipe if missing, logs "ready" on stderr once the
// consumer runs, and consumes until SIGTERM. bench.py reads the rates from
// nodepipe.runs and the CPU of this process from /proc.
import { Kafka, logLevel } from "kafkajs";
import Redis from "ioredis";
import pg from "pg";

const [brokers, topic, group, dbUrl, redisUrl] = process.argv.slice(2);
if (!redisUrl) {
  console.error("usage: node pipe.mjs BROKERS TOPIC GROUP DATABASE_URL REDIS_URL");
  process.exit(2);
}
const LEASE_TTL_MS = 60000;
const LEASE_RETRY_MS = 1;

const SCHEMA = `
CREATE SCHEMA IF NOT EXISTS nodepipe;
CREATE TABLE IF NOT EXISTS nodepipe.runs (
  job_id text PRIMARY KEY, project_id text NOT NULL, status text NOT NULL,
  lease_token bigint NOT NULL DEFAULT 0, spec jsonb NOT NULL,
  kafka_partition integer, kafka_offset bigint,
  created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(),
  started_at timestamptz, finished_at timestamptz);
CREATE TABLE IF NOT EXISTS nodepipe.run_events (
  id bigserial PRIMARY KEY, job_id text NOT NULL REFERENCES nodepipe.runs (job_id),
  from_status text, to_status text NOT NULL, lease_token bigint,
  at timestamptz NOT NULL DEFAULT clock_timestamp());`;

// KEYS: lease, fence counter. ARGV: job id, ttl ms. -> token, or 0 if busy.
const ACQUIRE = `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local t = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. t, 'PX', ARGV[2])
return t`;
// KEYS: lease. ARGV: job id, token. Only the holder releases.
const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] .. ':' .. ARGV[2] then
  return redis.call('DEL', KEYS[1]) end
return 0`;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const pool = new pg.Pool({ connectionString: dbUrl, max: 20 });
const redis = new Redis(redisUrl, { maxRetriesPerRequest: null });
redis.defineCommand("leaseAcquire", { numberOfKeys: 2, lua: ACQUIRE });
redis.defineCommand("leaseRelease", { numberOfKeys: 1, lua: RELEASE });

async function tx(fn) {
  const c = await pool.connect();
  try {
    await c.query("BEGIN");
    await fn(c);
    await c.query("COMMIT");
  } catch (e) {
    await c.query("ROLLBACK").catch(() => {});
    throw e;
  } finally {
    c.release();
  }
}

async function handle(partition, m) {
  const spec = JSON.parse(m.value.toString());
  const job = spec.job_id;
  const project = spec.project_id;
  await tx(async (c) => {
    const r = await c.query(
      "INSERT INTO nodepipe.runs (job_id, project_id, status, spec, kafka_partition, kafka_offset)" +
      " VALUES ($1, $2, 'queued', $3, $4, $5) ON CONFLICT (job_id) DO NOTHING",
      [job, project, spec, partition, m.offset]);
    if (r.rowCount)
      await c.query("INSERT INTO nodepipe.run_events (job_id, from_status, to_status)" +
                    " VALUES ($1, NULL, 'queued')", [job]);
  });
  const key = "np:lease:" + project;
  let token;
  while (!(token = await redis.leaseAcquire(key, "np:fence", job, LEASE_TTL_MS)))
    await sleep(LEASE_RETRY_MS);
  // The build: a no-op, as with sbx's bench provider.
  await tx(async (c) => {
    const r = await c.query(
      "UPDATE nodepipe.runs SET status = 'succeeded', lease_token = $2, started_at = now(),"
      + " finished_at = now(), updated_at = now() WHERE job_id = $1 AND lease_token < $2",
      [job, token]);
    if (r.rowCount)
      await c.query("INSERT INTO nodepipe.run_events (job_id, from_status, to_status, lease_token)"
                    + " VALUES ($1, 'queued', 'provisioning', $2), ($1, 'provisioning', 'running', $2),"
                    + " ($1, 'running', 'succeeded', $2)", [job, token]);
  });
  await redis.leaseRelease(key, job, token);
}

async function main() {
  await pool.query(SCHEMA);
  const kafka = new Kafka({ clientId: "nodepipe", brokers: brokers.split(","),
                            logLevel: logLevel.ERROR });
  const consumer = kafka.consumer({ groupId: group });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    await consumer.disconnect().catch(() => {});
    await redis.quit().catch(() => {});
    await pool.end().catch(() => {});
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  await consumer.run({
    autoCommit: false,
    partitionsConsumedConcurrently: 8,
    eachBatchAutoResolve: false,
    eachBatch: async ({ batch, resolveOffset, heartbeat }) => {
      if (!batch.messages.length) return;
      const chains = new Map();
      for (const m of batch.messages) {
        const project = m.key ? m.key.toString() : "";
        const prev = chains.get(project) || Promise.resolve();
        chains.set(project, prev.then(() => handle(batch.partition, m)));
      }
      await Promise.all(chains.values());
      const last = batch.messages[batch.messages.length - 1].offset;
      resolveOffset(last);
      // Offsets only after every job of the batch is durable.
      await consumer.commitOffsets([{ topic, partition: batch.partition,
                                      offset: (BigInt(last) + 1n).toString() }]);
      await heartbeat();
    },
  });
  console.error("nodepipe: ready");
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
