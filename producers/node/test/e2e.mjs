// e2e.mjs — drives @sbx/client against real services for
// tests/e2e/test_clients.py, which starts Kafka, PostgreSQL and an
// sbx-worker and judges what this prints: one JSON object on stdout.
//
// Environment: SBX_BROKERS, SBX_DATABASE_URL, SBX_TOPIC, E2E_JOB (the job, as
// JSON), E2E_TIMEOUT_S; E2E_FINGERPRINT_JOBS: jobs whose fingerprints to
// print (alone, without E2E_JOB). It enqueues the job, watches it to the end
// (each event stamped with when it arrived) while logs({follow}) follows it,
// watches it again once finished, reads it back with status(),
// list() and logs(), sends another payload under its id (refused), and
// cancels a finished and an unknown job. Every run and chunk it got is
// validated with Ajv against schemas/run.v1 and log.v1.
//
// E2E_SESSION ({"project", "session", "jobs"}, alone): enqueues the jobs in
// that session (the first with settings, the second by id), waits for them,
// reads the session back with getSession()/listSessions(), stops it, watches
// it until the test (playing the worker's sweeper) ends it, and stops it
// again and an unknown one; every session is validated against session.v1.
import { Ajv2020 } from "ajv/dist/2020.js";
import addFormatsModule from "ajv-formats";
import { SbxClient, isLogChunk, loadSchema, fingerprint, validateJob } from "../dist/index.js";

const addFormats = addFormatsModule.default ?? addFormatsModule;
const ajv = new Ajv2020({ strict: true, allErrors: true });
addFormats(ajv);
const check = { run: ajv.compile(loadSchema("run.v1.schema.json")), log: ajv.compile(loadSchema("log.v1.schema.json")),
  session: ajv.compile(loadSchema("session.v1.schema.json")) };
const schemaErrors = [];
const valid = (kind, v, where) => {
  if (!check[kind](v)) schemaErrors.push(`${where}: ${ajv.errorsText(check[kind].errors)} in ${JSON.stringify(v)}`);
  return v;
};

const sbx = new SbxClient({ brokers: process.env.SBX_BROKERS, topic: process.env.SBX_TOPIC, databaseUrl: process.env.SBX_DATABASE_URL });
const out = { schema_errors: schemaErrors,
  fingerprints: JSON.parse(process.env.E2E_FINGERPRINT_JOBS ?? "[]").map((j) => fingerprint(validateJob(j)).sha256) };
const t0 = Date.now();
const job = process.env.E2E_JOB ? JSON.parse(process.env.E2E_JOB) : null;
const sess = process.env.E2E_SESSION ? JSON.parse(process.env.E2E_SESSION) : null;

async function sessions() {
  const signal = AbortSignal.timeout(Number(process.env.E2E_TIMEOUT_S ?? 60) * 1000);
  const [j1, j2] = sess.jobs;
  out.twice_error = await sbx.enqueue({ ...j1, session: { id: sess.session } }, { session: sess.session })
    .then(() => null, (e) => e.message);
  out.enqueued = [await sbx.enqueue(j1, { session: { id: sess.session, pause_after_s: 600, idle_timeout_s: 1200 } }),
    await sbx.enqueue(j2, { session: sess.session })];
  for (const j of sess.jobs) for await (const e of sbx.watch(j.job_id, { signal })) void e;
  for (;;) {
    const s = await sbx.getSession(sess.project, sess.session);
    if (s && s.jobs === 2 && s.state !== "busy") break;
    if (signal.aborted) throw new Error("the session never became idle after its two jobs");
    await new Promise((res) => setTimeout(res, 200));
  }
  out.session = valid("session", await sbx.getSession(sess.project, sess.session, { history: true }), "getSession");
  out.list = (await sbx.listSessions({ project: sess.project })).map((s) => valid("session", s, "listSessions"));
  out.live = (await sbx.listSessions({ project: sess.project, state: "live" })).map((s) => s.session_id);
  out.unknown = await sbx.getSession(sess.project, "no-such-session");
  out.stop = await sbx.stopSession(sess.project, sess.session);
  out.watched = [];
  for await (const s of sbx.watchSession(sess.project, sess.session, { signal })) out.watched.push(valid("session", s, "watchSession"));
  out.stop_again = await sbx.stopSession(sess.project, sess.session);
  out.stop_unknown = await sbx.stopSession(sess.project, "no-such-session");
  out.final = valid("session", await sbx.getSession(sess.project, sess.session, { history: true }), "getSession ended");
  out.final_list = (await sbx.listSessions({ project: sess.project })).map((s) => valid("session", s, "listSessions"));
}

try {
  if (sess) {
    await sessions();
    throw null;
  }
  if (!job) throw null;
  out.enqueued = await sbx.enqueue(job);
  out.first_status = valid("run", await sbx.status(job.job_id), "status after enqueue");
  out.events = [];
  const signal = AbortSignal.timeout(Number(process.env.E2E_TIMEOUT_S ?? 60) * 1000);
  // logs({follow}) at the same time, on its own connection.
  const followed = (async () => {
    const got = [];
    for await (const c of sbx.logs(job.job_id, { follow: true, signal })) got.push(valid("log", c, "logs follow"));
    return got;
  })();
  for await (const e of sbx.watch(job.job_id, { signal })) {
    const log = isLogChunk(e);
    valid(log ? "log" : "run", e, "watch");
    out.events.push({ kind: log ? "log" : "run", ms: Date.now() - t0, value: e });
  }
  out.followed = await followed;
  // Watching a finished run: its chunks, then its terminal status, and the end.
  out.rewatch = [];
  for await (const e of sbx.watch(job.job_id, { signal })) out.rewatch.push(e);
  // ... resumed after its first chunk.
  out.resumed = [];
  const c0 = out.rewatch[0];
  for await (const e of sbx.watch(job.job_id, { signal, after: [c0.attempt, c0.seq] })) out.resumed.push(e);
  out.status = valid("run", await sbx.status(job.job_id, { history: true }), "status --history");
  out.list = (await sbx.list({ project: job.project_id })).map((r) => valid("run", r, "list"));
  out.logs = [];
  for await (const c of sbx.logs(job.job_id)) out.logs.push(valid("log", c, "logs"));
  out.reused_error = await sbx.enqueue({ ...job, script: "echo another payload" }).then(() => null, (e) => e.message);
  out.cancel_finished = await sbx.cancel(job.job_id);
  out.cancel_unknown = await sbx.cancel(`${job.job_id}-never-sent`);
  out.unknown_status = await sbx.status(`${job.job_id}-not-a-job`);
} catch (e) {
  if (e !== null) out.error = String(e?.stack ?? e);
} finally {
  await sbx.close();
}
process.stdout.write(JSON.stringify(out) + "\n");
