/* job.ts — what a job message must be before it is sent, and the form of it
 * that may be written down.
 *
 * validateJob() is the gate enqueue() passes first: schemas/job.v1.schema.json
 * through Ajv (draft 2020-12, strict, the same options tests/schema/check.mjs
 * uses), preceded by the rules libsbx adds that JSON Schema cannot say
 * (schemas/README.md, "What the C validator adds"): at most 1 MiB of UTF-8,
 * no "\u0000" or unpaired surrogate in any string, nesting at most 32 deep,
 * `files` contents at most 512 KiB in total. A job refused here is refused by
 * every worker too, so it is never sent.
 *
 * fingerprint() mirrors producers/lib/redact.c: env values and unknown
 * top-level members become "<redacted>", and the SHA-256 of the re-serialised
 * text is the run's payload_sha256. JSON.stringify writes what json-c writes
 * for a message that JSON.stringify produced (members in order, no spaces,
 * the same escapes, "/" unescaped), so the hash is the one the worker and
 * `sbx enqueue` compute; tests hold the two together.
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { Ajv2020 } from "ajv/dist/2020.js";
import addFormatsModule from "ajv-formats";

// A CommonJS module: under NodeNext its function is the default member.
const addFormats = addFormatsModule.default;
import type { Job } from "./generated/job.js";

// The numbers are libsbx's (producers/include/sbx.h, producers/lib/job.c).
export const MSG_MAX_BYTES = 1024 * 1024;
const DEPTH_MAX = 32;
const FILES_BYTES_MAX = 512 * 1024;

// The top-level members the job schema names (producers/lib/redact.c).
const KNOWN = new Set(["v", "job_id", "project_id", "command", "script", "env", "files", "image", "timeout_s",
  "resources", "network", "egress", "provider", "trace", "metadata", "session", "submitted_at"]);
export const REDACTED = "<redacted>";

/** Reads one of the schema files shipped in dist/schemas (copied from the
 * repository's schemas/ by the build, never edited by hand). */
export function loadSchema(name: string): object {
  return JSON.parse(readFileSync(new URL(`./schemas/${name}`, import.meta.url), "utf8")) as object;
}

let compiled: ReturnType<Ajv2020["compile"]> | undefined;
function schemaCheck() {
  if (!compiled) {
    const ajv = new Ajv2020({ strict: true, allErrors: true });
    addFormats(ajv);
    compiled = ajv.compile(loadSchema("job.v1.schema.json"));
  }
  return compiled;
}

export class JobInvalidError extends Error {
  readonly errors: string[];
  constructor(errors: string[]) {
    super(`job refused before sending: ${errors.join("; ")}`);
    this.name = "JobInvalidError";
    this.errors = errors;
  }
}

/** Walks the value for what the schema cannot see; returns the depth. */
function textGates(v: unknown, depth: number, errors: string[]): number {
  const ok = (s: string, where: string) => {
    if (s.includes("\u0000")) errors.push(`${where}: contains U+0000`);
    else if (!s.isWellFormed()) errors.push(`${where}: contains an unpaired surrogate`);
  };
  if (typeof v === "string") {
    ok(v, "a string");
    return depth;
  }
  if (v === null || typeof v !== "object") return depth;
  let max = depth + 1;
  for (const [k, x] of Object.entries(v)) {
    if (!Array.isArray(v)) ok(k, "a member name");
    max = Math.max(max, textGates(x, depth + 1, errors));
  }
  return max;
}

/** The message text of a job, or a JobInvalidError with every reason. */
export function validateJob(job: unknown): string {
  const errors: string[] = [];
  if (job === null || typeof job !== "object" || Array.isArray(job)) throw new JobInvalidError(["a job is a JSON object"]);
  const depth = textGates(job, 0, errors);
  if (depth > DEPTH_MAX) errors.push(`nested ${depth} deep (at most ${DEPTH_MAX})`);
  if (errors.length) throw new JobInvalidError(errors);
  let text: string;
  try {
    text = JSON.stringify(job);
  } catch (e) {
    throw new JobInvalidError([`not serialisable as JSON: ${(e as Error).message}`]);
  }
  // JSON.stringify drops undefined and functions and writes NaN as null:
  // validate what would be sent, not the object handed in.
  const sent: unknown = JSON.parse(text);
  const check = schemaCheck();
  if (!check(sent)) {
    for (const e of check.errors ?? []) errors.push(`${e.instancePath || "/"} ${e.message ?? "is invalid"}`);
  }
  const files = (sent as { files?: Record<string, string> }).files;
  if (files && typeof files === "object") {
    const n = Object.values(files).reduce((t, s) => t + (typeof s === "string" ? Buffer.byteLength(s, "utf8") : 0), 0);
    if (n > FILES_BYTES_MAX) errors.push(`files hold ${n} bytes (at most ${FILES_BYTES_MAX})`);
  }
  const bytes = Buffer.byteLength(text, "utf8");
  if (bytes > MSG_MAX_BYTES) errors.push(`the message is ${bytes} bytes (at most ${MSG_MAX_BYTES})`);
  if (errors.length) throw new JobInvalidError(errors);
  return text;
}

/** The redacted text of a message and its SHA-256 (sbx.runs.payload_sha256). */
export function fingerprint(text: string): { redacted: string; sha256: string } {
  const job = JSON.parse(text) as Record<string, unknown>;
  for (const k of Object.keys(job)) {
    const v = job[k];
    if (k === "env" && v !== null && typeof v === "object" && !Array.isArray(v)) {
      const env = v as Record<string, unknown>;
      for (const name of Object.keys(env)) env[name] = REDACTED;
    } else if (k === "env" || !KNOWN.has(k)) {
      job[k] = REDACTED;
    }
  }
  const redacted = JSON.stringify(job);
  return { redacted, sha256: createHash("sha256").update(redacted, "utf8").digest("hex") };
}

export type { Job };
