// bench.mjs — the peer of sbx's dispatch benchmark: the same no-op jobs
// through BullMQ (https://docs.bullmq.io) on the same Redis.
//
// Like the sbx run it is compared with, every job is published first
// (Queue.addBulk, in chunks), then one Worker with a no-op processor and high
// concurrency drains the queue. BullMQ keeps each finished job in Redis (its
// default removeOnComplete: false), which is the nearest it has to sbx's run
// rows. What it does not do is printed by bench.py beside the figures.
//
// Usage: node bench.mjs REDIS_URL QUEUE JOBS CONCURRENCY TIMEOUT_S
// Prints "draining" and "drained" around the drain (bench.py reads the
// servers' CPU there), then one JSON line: {"jobs", "done", "add_s",
// "drain_s", "rate", "cpu_s" (this process while draining), "timed_out"}.
// Exits non-zero on errors; gives up draining after TIMEOUT_S.
import { Queue, Worker } from "bullmq";

const [url, queueName, jobsArg, concArg, timeoutArg] = process.argv.slice(2);
const jobs = Number(jobsArg);
const concurrency = Number(concArg);
const timeoutS = Number(timeoutArg);
if (!url || !queueName || !(jobs > 0) || !(concurrency > 0) || !(timeoutS > 0)) {
  console.error("usage: node bench.mjs REDIS_URL QUEUE JOBS CONCURRENCY TIMEOUT_S");
  process.exit(2);
}
const u = new URL(url);
const connection = { host: u.hostname, port: Number(u.port || 6379), maxRetriesPerRequest: null };
// addBulk sends one MULTI per call; 1,000 jobs keep a call well under Redis'
// client output limits while making round trips rare.
const CHUNK = 1000;
const PROJECTS = 1000;

function cpuSeconds() {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

async function main() {
  const queue = new Queue(queueName, { connection });
  await queue.waitUntilReady();
  const t0 = performance.now();
  for (let i = 0; i < jobs; i += CHUNK) {
    const batch = [];
    for (let k = i; k < Math.min(jobs, i + CHUNK); k++)
      batch.push({ name: "build", data: { project_id: "p" + (k % PROJECTS), command: ["true"] },
                   opts: { jobId: "j" + k } });
    await queue.addBulk(batch);
  }
  const addS = (performance.now() - t0) / 1000;

  let done = 0;
  let first = 0;
  let last = 0;
  let cpu0 = 0;
  let finish;
  const finished = new Promise((resolve) => { finish = resolve; });
  const worker = new Worker(queueName, async () => {
    if (!first) {
      first = performance.now();
      cpu0 = cpuSeconds();
    }
  }, { connection, concurrency, autorun: false });
  worker.on("completed", () => {
    done++;
    if (done === jobs) {
      last = performance.now();
      finish(false);
    }
  });
  worker.on("error", (e) => console.error("worker error:", e.message));
  const timer = setTimeout(() => finish(true), timeoutS * 1000);
  console.log("draining");
  worker.run();
  const timedOut = await finished;
  console.log("drained");
  clearTimeout(timer);
  if (timedOut)
    last = performance.now();
  const cpu = cpuSeconds() - cpu0;
  await worker.close(true);
  await queue.obliterate({ force: true }).catch(() => {});
  await queue.close();
  const drainS = first ? (last - first) / 1000 : 0;
  console.log(JSON.stringify({ jobs, done, add_s: addS, drain_s: drainS,
                               rate: drainS > 0 ? done / drainS : 0, cpu_s: cpu,
                               timed_out: timedOut }));
}

main().then(() => process.exit(0), (e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
