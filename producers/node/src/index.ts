/* index.ts — @sbx/client: enqueue sbx jobs and follow their runs and
 * sessions. The types Job, Run, LogChunk and Session are generated from
 * schemas/ (scripts/build.mjs). */
export { SbxClient, SbxError, isLogChunk } from "./client.js";
export type { ClientOptions, Enqueued, ListFilter, CancelResult, WatchOptions, WatchEvent,
  EnqueueOptions, SessionOptions, SessionFilter, StopSessionResult } from "./client.js";
export { JobInvalidError, validateJob, fingerprint, loadSchema } from "./job.js";
export type { Job } from "./generated/job.js";
export type { Run } from "./generated/run.js";
export type { LogChunk } from "./generated/log.js";
export type { Session } from "./generated/session.js";
