/* client.ts — SbxClient: what a TypeScript control plane does with sbx.
 *
 * Two connections, each made on first use: a Kafka producer for enqueue()
 * and a PostgreSQL pool for everything else (the run is the record; Kafka
 * only carries the job). watch() and logs({follow}) take a connection of
 * their own for LISTEN, held until the iteration ends.
 *
 * enqueue() does what `sbx enqueue` does (producers/lib/producer.c,
 * submit.c): validate, record the job as `submitted` if a database is
 * configured (sbx.submit_run, refusing a job id already used by another
 * payload), publish keyed by project_id with acks=all and idempotence, wait
 * for the broker's acknowledgement, and take the row back
 * (sbx.forget_submitted) if the publish failed (not if it timed out: the
 * message may still arrive). The partitioner is Java's
 * murmur2 (@platformatic/kafka's compatibilityPartitioner), librdkafka's
 * murmur2_random for a keyed message, so a project's jobs land on the same
 * partition whichever client sent them.
 *
 * watch() reads, then listens: LISTEN sbx_runs and sbx_logs first, then the
 * run and its chunks so far, then on each notification for this job the new
 * state. NOTIFY is a hint (migrations/0001_runs.sql): what is yielded is read
 * from the tables, and a re-read every second covers a missed hint. Order
 * kept: every chunk is yielded once, by (attempt, seq); a status is yielded
 * when it differs from the last one yielded; the terminal status comes last,
 * after the chunks the run wrote, which the worker stores before it
 * finishes the run.
 *
 * Sessions (many jobs of a project in one sandbox, migrations/0010) are
 * read as session.v1 (sbx.session_v1()); enqueue() puts a job in one with
 * its session option. watchSession() is watch() for a session: LISTEN
 * sbx_sessions, read, and on each notification for it (or every second)
 * read again; it yields the session when its state, generation or
 * stop_requested changed, and ends after it ended.
 */
import pg from "pg";
import { Producer, ProduceAcks, stringSerializers, compatibilityPartitioner } from "@platformatic/kafka";
import type { Job } from "./generated/job.js";
import type { Run } from "./generated/run.js";
import type { LogChunk } from "./generated/log.js";
import type { Session } from "./generated/session.js";
import { fingerprint, validateJob } from "./job.js";
import * as SQL from "./sql.js";

export interface ClientOptions {
  /** Kafka bootstrap brokers, "host:port,host:port" or a list. Needed by enqueue(). */
  brokers?: string | string[];
  /** The job topic; default "sbx.jobs". */
  topic?: string;
  /** PostgreSQL URL (a role with sbx_submitter to enqueue/cancel, sbx_reader to read). */
  databaseUrl?: string;
  /** Extra @platformatic/kafka producer options (tls, sasl, timeouts); applied last. */
  kafka?: Record<string, unknown>;
  /** How long enqueue() waits for the acknowledgement, ms; default 30000. */
  ackTimeoutMs?: number;
}

export interface Enqueued {
  job_id: string;
  partition: number;
  offset: string;
  /** A 'submitted' row was made for it (a database is configured and the id was new). */
  recorded: boolean;
}

export interface ListFilter {
  project?: string;
  /** A status, or "active" (not terminal) / "finished" (terminal), as `sbx list --status`. */
  status?: Run["status"] | "active" | "finished";
  /** Runs created at or after this time. */
  since?: Date | string;
  /** At most this many, newest first; default 50 (`sbx list`'s). */
  limit?: number;
}

export interface CancelResult {
  /** flagged (the worker holding it stops it), canceled (not consumed yet: ended now),
   * recorded (not seen yet: it will not run), finished (already terminal). */
  outcome: "flagged" | "canceled" | "recorded" | "finished";
  status: Run["status"];
}

/** A job message's "session": its id and, optionally, its timeouts (the
 * worker's defaults otherwise: 300, 900, 86400 s). */
export type SessionOptions = NonNullable<Job["session"]>;

export interface EnqueueOptions {
  /** Run the job in the project's session of this id (or these settings): the
   * same sandbox and workspace as the session's earlier jobs, as `sbx enqueue --session`. */
  session?: string | SessionOptions;
}

export interface SessionFilter {
  project?: string;
  /** A state, or "live" (not ended), as `sbx session list --state`. */
  state?: Session["state"] | "live";
  /** At most this many, most recently used first; default 50. */
  limit?: number;
}

export interface StopSessionResult {
  /** requested (a worker ends it once no job holds it), ended (it had already
   * ended: nothing to do), unknown (no such session). */
  outcome: "requested" | "ended" | "unknown";
  /** The state it was in; null for an unknown session. */
  state: Session["state"] | null;
}

export interface WatchOptions {
  /** Ends the iteration (the iterator returns) when aborted. */
  signal?: AbortSignal;
  /** Resume: only chunks after this [attempt, seq] (the last one a reader
   * kept before its connection broke); default from the start. */
  after?: [number, number];
}

/** What watch() yields: a run.v1 when its status changed, a log.v1 chunk as it is stored. */
export type WatchEvent = Run | LogChunk;

/** Whether a watch() event is a log chunk (log.v1 has seq; run.v1 has status). */
export function isLogChunk(e: WatchEvent): e is LogChunk {
  return "seq" in e && !("status" in e);
}

const LOG_PAGE = 1000;
const REREAD_MS = 1000;

export class SbxError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "SbxError";
  }
}

export class SbxClient {
  readonly #opt: ClientOptions;
  #producer?: Producer<string, string, string, string>;
  #pool?: pg.Pool;

  constructor(options: ClientOptions) {
    this.#opt = { topic: "sbx.jobs", ackTimeoutMs: 30000, ...options };
  }

  #db(): pg.Pool {
    if (!this.#opt.databaseUrl) throw new SbxError("no databaseUrl given");
    this.#pool ??= new pg.Pool({ connectionString: this.#opt.databaseUrl, max: 4, application_name: "sbx-client-node" });
    return this.#pool;
  }

  #kafka(): Producer<string, string, string, string> {
    const b = this.#opt.brokers;
    if (!b || b.length === 0) throw new SbxError("no brokers given");
    this.#producer ??= new Producer({
      clientId: "sbx-client-node",
      bootstrapBrokers: typeof b === "string" ? b.split(",").map((s) => s.trim()) : b,
      idempotent: true,
      acks: ProduceAcks.ALL,
      partitioner: compatibilityPartitioner,
      serializers: stringSerializers,
      timeout: this.#opt.ackTimeoutMs,
      ...this.#opt.kafka,
    });
    return this.#producer;
  }

  /** Validates the job (throws JobInvalidError, sending nothing), records it
   * as submitted when a database is configured, publishes it keyed by
   * project_id, and resolves once the brokers acknowledged it. */
  async enqueue(job: Job, options: EnqueueOptions = {}): Promise<Enqueued> {
    if (options.session !== undefined) {
      if (job.session !== undefined) throw new SbxError(`job ${job.job_id} names a session; give it once`);
      job = { ...job, session: typeof options.session === "string" ? { id: options.session } : options.session };
    }
    const text = validateJob(job);
    const producer = this.#kafka();
    let recorded = false;
    let sha = "";
    if (this.#opt.databaseUrl) {
      const fp = fingerprint(text);
      sha = fp.sha256;
      const r = await this.#db().query(SQL.SUBMIT, [job.job_id, job.project_id, fp.redacted, sha]);
      const row = r.rows[0];
      if (row.reused) {
        throw new SbxError(`job id ${job.job_id} is already used by another payload (its run is ${row.status}, ` +
          `payload_sha256 ${row.first_sha}; this one's is ${sha}); nothing sent`);
      }
      recorded = row.inserted;
    }
    let res;
    try {
      res = await withTimeout(producer.send({ messages: [{ topic: this.#opt.topic!, key: job.project_id, value: text }] }),
        this.#opt.ackTimeoutMs!);
    } catch (e) {
      // Refused or failed: the row goes, if it is still 'submitted' with this
      // fingerprint (0005), as libsbx does when a delivery report fails.
      if (recorded) await this.#db().query(SQL.FORGET, [job.job_id, sha]).catch(() => undefined);
      throw new SbxError(`publishing ${job.job_id}: ${(e as Error).message}`, { cause: e });
    }
    // No answer in time: the message may still reach the brokers, so the
    // row stays (libsbx keeps it when no report comes), and a worker that
    // consumes it moves it on; `sbx cancel` ends it if it never comes.
    if (res === TIMED_OUT) throw new SbxError(`no acknowledgement for ${job.job_id} within ${this.#opt.ackTimeoutMs} ms`);
    const o = res.offsets?.[0];
    if (!o) throw new SbxError(`publishing ${job.job_id}: the broker returned no offset`);
    return { job_id: job.job_id, partition: o.partition, offset: String(o.offset), recorded };
  }

  /** The run (run.v1), with its events if history; null for an unknown job. */
  async status(jobId: string, options: { history?: boolean } = {}): Promise<Run | null> {
    const r = await this.#db().query(SQL.STATUS, [jobId, options.history ?? false]);
    return r.rows.length ? (r.rows[0].run as Run) : null;
  }

  /** Runs, newest first. */
  async list(filter: ListFilter = {}): Promise<Run[]> {
    const since = filter.since instanceof Date ? filter.since.toISOString() : filter.since ?? null;
    const r = await this.#db().query(SQL.LIST, [filter.project ?? null, filter.status ?? null, since, filter.limit ?? 50]);
    return r.rows.map((x) => x.run as Run);
  }

  /** `sbx cancel`: sbx.request_cancel (migrations/0005_submitted.sql). */
  async cancel(jobId: string): Promise<CancelResult> {
    const r = await this.#db().query(SQL.CANCEL, [jobId]);
    return r.rows[0] as CancelResult;
  }

  /** The run's log chunks (log.v1) in order; with follow, also those written
   * from now on, until the run is terminal and its log drained. */
  async *logs(jobId: string, options: { follow?: boolean } & WatchOptions = {}): AsyncGenerator<LogChunk> {
    if (options.follow) {
      for await (const e of this.watch(jobId, options)) if (isLogChunk(e)) yield e;
      return;
    }
    let cur: [number, number] = options.after ?? [0, -1];
    for (;;) {
      const page = await this.#chunks(this.#db(), jobId, cur);
      for (const c of page) yield c;
      if (page.length < LOG_PAGE) return;
      const last = page[page.length - 1];
      cur = [last.attempt, last.seq];
    }
  }

  async #chunks(q: pg.Pool | pg.PoolClient, jobId: string, after: [number, number]): Promise<LogChunk[]> {
    const r = await q.query(SQL.LOGS_AFTER, [jobId, after[0], after[1], LOG_PAGE]);
    return r.rows.map((x) => x.chunk as LogChunk);
  }

  /** Each status change of the run (run.v1) and each log chunk (log.v1), in
   * order, starting with the run as it is now (once it exists); ends after
   * the terminal status, which follows the run's last chunk. */
  async *watch(jobId: string, options: WatchOptions = {}): AsyncGenerator<WatchEvent> {
    let lastStatus: string | undefined;
    let cur: [number, number] = options.after ?? [0, -1];
    const drain = async function* (self: SbxClient, conn: pg.PoolClient): AsyncGenerator<LogChunk> {
      for (;;) {
        const page = await self.#chunks(conn, jobId, cur);
        for (const c of page) {
          cur = [c.attempt, c.seq];
          yield c;
        }
        if (page.length < LOG_PAGE) return;
      }
    };
    const self = this;
    yield* this.#listen(`watch ${jobId}`, ["sbx_runs", "sbx_logs"],
      (p) => p.job_id === jobId, options.signal,
      async function* (conn): AsyncGenerator<WatchEvent, boolean> {
        const r = await conn.query(SQL.STATUS, [jobId, false]);
        const run = r.rows[0]?.run as Run | undefined;
        // Chunks first: those stored before this status was read belong before it.
        yield* drain(self, conn);
        if (run && run.status !== lastStatus) {
          if (SQL.TERMINAL.has(run.status)) yield* drain(self, conn);
          lastStatus = run.status;
          yield run;
          if (SQL.TERMINAL.has(run.status)) return true;
        }
        return false;
      });
  }

  /** The loop of watch and watchSession: a pooled connection that LISTENs on
   * channels; read(conn) runs at once, then after each notification whose
   * payload matches (or that does not parse) and every REREAD_MS without
   * one, yields what changed and returns true when the watched thing is done. */
  async *#listen<T>(what: string, channels: string[],
                    matches: (payload: Record<string, unknown>) => boolean,
                    signal: AbortSignal | undefined,
                    read: (conn: pg.PoolClient) => AsyncGenerator<T, boolean>): AsyncGenerator<T> {
    const conn = await this.#db().connect();
    let wake: (() => void) | undefined;
    let dirty = true;
    const poke = () => { dirty = true; wake?.(); };
    const onNotify = (n: pg.Notification) => {
      try {
        if (matches(JSON.parse(n.payload ?? "{}") as Record<string, unknown>)) poke();
      } catch { poke(); }
    };
    let failed: Error | undefined;
    const onError = (e: Error) => { failed = e; poke(); };
    conn.on("notification", onNotify);
    conn.on("error", onError);
    signal?.addEventListener("abort", poke);
    let broken = false;
    try {
      for (const c of channels) await conn.query(`LISTEN ${c}`);
      while (!signal?.aborted) {
        if (failed) throw new SbxError(`${what}: ${failed.message}`, { cause: failed });
        if (dirty) {
          dirty = false;
          if (yield* read(conn)) return;
        }
        await new Promise<void>((res) => {
          const t = setTimeout(() => { dirty = true; res(); }, REREAD_MS);
          wake = () => { clearTimeout(t); res(); };
        });
        wake = undefined;
      }
    } catch (e) {
      broken = true;
      throw e;
    } finally {
      signal?.removeEventListener("abort", poke);
      conn.off("notification", onNotify);
      conn.off("error", onError);
      if (!broken) await conn.query("UNLISTEN *").catch(() => { broken = true; });
      conn.release(broken || failed !== undefined);
    }
  }

  /** The session (session.v1), with its events if history; null if there is none. */
  async getSession(projectId: string, sessionId: string, options: { history?: boolean } = {}): Promise<Session | null> {
    const r = await this.#db().query(SQL.SESSION, [projectId, sessionId, options.history ?? false]);
    return r.rows.length ? (r.rows[0].session as Session) : null;
  }

  /** Sessions, most recently used first, as `sbx session list`. */
  async listSessions(filter: SessionFilter = {}): Promise<Session[]> {
    const r = await this.#db().query(SQL.SESSIONS, [filter.project ?? null, filter.state ?? null, filter.limit ?? 50]);
    return r.rows.map((x) => x.session as Session);
  }

  /** `sbx session stop`: sbx.stop_session (migrations/0010_sessions.sql). */
  async stopSession(projectId: string, sessionId: string): Promise<StopSessionResult> {
    const r = await this.#db().query(SQL.STOP_SESSION, [projectId, sessionId]);
    const state = (r.rows[0].state as string) || null;
    return {
      outcome: state === null ? "unknown" : state === "ended" ? "ended" : "requested",
      state: state as Session["state"] | null,
    };
  }

  /** The session (session.v1) as it is now (once it exists), then each change
   * of its state, generation or stop_requested; ends after it ended. */
  async *watchSession(projectId: string, sessionId: string, options: { signal?: AbortSignal } = {}): AsyncGenerator<Session> {
    let last: string | undefined;
    yield* this.#listen(`watchSession ${projectId}/${sessionId}`, ["sbx_sessions"],
      (p) => p.project_id === projectId && p.session_id === sessionId, options.signal,
      async function* (conn): AsyncGenerator<Session, boolean> {
        const r = await conn.query(SQL.SESSION, [projectId, sessionId, false]);
        const s = r.rows[0]?.session as Session | undefined;
        const key = s && `${s.state} ${s.generation} ${s.stop_requested}`;
        if (s && key !== last) {
          last = key;
          yield s;
          if (s.state === "ended") return true;
        }
        return false;
      });
  }

  /** Closes the producer (after in-flight sends) and the pool. */
  async close(): Promise<void> {
    const p = this.#producer, db = this.#pool;
    this.#producer = undefined;
    this.#pool = undefined;
    await Promise.all([p?.close(), db?.end()]);
  }
}

const TIMED_OUT = Symbol("timed out");

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T | typeof TIMED_OUT> {
  let t: NodeJS.Timeout;
  return Promise.race([p, new Promise<typeof TIMED_OUT>((res) => { t = setTimeout(() => res(TIMED_OUT), ms); })])
    .finally(() => clearTimeout(t));
}
