// check.mjs — holds the JSON Schemas, their example vectors and libsbx's C
// validator to one another.
//
// For every file in schemas/examples/<kind>/{valid,invalid,malformed}/ it
// computes a reference verdict: Ajv (draft 2020-12, strict mode) for the
// schema, preceded by the text gates that libsbx applies before the schema
// and that JSON Schema cannot see (size, strict UTF-8, RFC 8259 syntax,
// "\u0000" and unpaired surrogates, duplicate member names, nesting depth;
// see producers/lib/job.c). A vector fails when its reference verdict does not
// match its folder, or — for job messages — when `sbx-validate` (the C code
// the worker runs) reaches a different verdict. Then it mutates the valid job
// vectors (seeded, so runs repeat) and compares C with the reference on each
// mutant, which finds disagreements no hand-written vector thought of.
//
// run.v1, log.v1 and session.v1 (what sbx reports: `sbx status/list/wait/logs
// --json`, `sbx session show/list --json` and the clients) have only Ajv:
// their vectors check the schemas themselves (tests/e2e/test_cli_runs.py and
// test_cli_sessions.py hold what the SQL functions return to them).
//
// Usage: node check.mjs [--validator PATH] [--mutants N] [--seed S] [-v]
// Prints one line per failure and last `schema: N passed, M failed`.
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import Ajv2020Module from "ajv/dist/2020.js";
import addFormatsModule from "ajv-formats";

const Ajv2020 = Ajv2020Module.default ?? Ajv2020Module;
const addFormats = addFormatsModule.default ?? addFormatsModule;

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "../..");

// The numbers below are libsbx's (producers/include/sbx.h, job.c).
const MSG_MAX_BYTES = 1024 * 1024;
const DEPTH_MAX = 32;
const FILES_BYTES_MAX = 512 * 1024;

function parseArgs(argv) {
  const o = { validator: path.join(repo, "build/bin/sbx-validate"), mutants: 3000, seed: 20240501, verbose: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--validator") o.validator = path.resolve(argv[++i]);
    else if (a === "--mutants") o.mutants = Number(argv[++i]);
    else if (a === "--seed") o.seed = Number(argv[++i]);
    else if (a === "-v" || a === "--verbose") o.verbose = true;
    else {
      console.error(`usage: node check.mjs [--validator PATH] [--mutants N] [--seed S] [-v]`);
      process.exit(2);
    }
  }
  return o;
}

// ---- reference verdicts ----

// Name/value pairs as written: colons outside strings. Only meaningful for
// text JSON.parse accepted, where every such colon separates a pair.
function pairsInText(text) {
  let n = 0;
  for (let i = 0, inString = false; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === "\\") i++;
      else if (c === '"') inString = false;
    } else if (c === '"') inString = true;
    else if (c === ":") n++;
  }
  return n;
}

// Pairs JSON.parse kept (a repeated name keeps only its last value), the
// nesting depth, and whether every string and name is one libsbx accepts.
function walk(v, st, depth) {
  const textOk = (s) => !s.includes("\u0000") && s.isWellFormed();
  if (typeof v === "string") {
    st.textOk &&= textOk(v);
  } else if (Array.isArray(v)) {
    st.depth = Math.max(st.depth, depth + 1);
    for (const x of v) walk(x, st, depth + 1);
  } else if (v !== null && typeof v === "object") {
    st.depth = Math.max(st.depth, depth + 1);
    for (const k of Object.keys(v)) {
      st.pairs++;
      st.textOk &&= textOk(k);
      walk(v[k], st, depth + 1);
    }
  }
  return st;
}

function jobReference(bytes, validateJob) {
  if (bytes.length > MSG_MAX_BYTES) return "too_large";
  let text, value;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    return "not_utf8";
  }
  try {
    value = JSON.parse(text);
  } catch {
    return "invalid_json";
  }
  const st = walk(value, { pairs: 0, depth: 0, textOk: true }, 0);
  if (!st.textOk) return "invalid_json";
  if (value === null || typeof value !== "object" || Array.isArray(value)) return "schema_violation";
  if (st.depth > DEPTH_MAX) return "schema_violation";
  if (st.pairs !== pairsInText(text)) return "invalid_json";
  if (!validateJob(value)) return "schema_violation";
  const files = Object.values(value.files ?? {});
  if (files.reduce((n, s) => n + Buffer.byteLength(s, "utf8"), 0) > FILES_BYTES_MAX) return "schema_violation";
  return "ok";
}

function plainReference(bytes, validate) {
  let value;
  try {
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes));
  } catch {
    return "malformed";
  }
  return validate(value) ? "ok" : "schema_violation";
}

const expectedByFolder = {
  valid: (r) => r === "ok",
  invalid: (r) => r === "schema_violation",
  malformed: (r) => r === "invalid_json" || r === "not_utf8" || r === "malformed",
};

// ---- the C side ----

function cVerdicts(validator, files) {
  const out = [];
  for (let i = 0; i < files.length; i += 400) {
    const batch = files.slice(i, i + 400);
    let stdout;
    try {
      stdout = execFileSync(validator, batch, { encoding: "utf8", maxBuffer: 64 << 20 });
    } catch (e) {
      if (e.status !== 1 || typeof e.stdout !== "string") throw e; // 1 = some rejected
      stdout = e.stdout;
    }
    const lines = stdout.split("\n");
    lines.pop();
    if (lines.length !== batch.length) throw new Error(`sbx-validate printed ${lines.length} lines for ${batch.length} files`);
    for (const line of lines) {
      const m = /^reject ([a-z0-9_]+): (.*)$/s.exec(line);
      out.push(line === "ok" ? { verdict: "ok", line } : m ? { verdict: m[1], line } : { verdict: "error", line });
    }
  }
  return out;
}

// ---- mutants ----

function rng(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const STRINGS = ["", "a", "A_1", "-a", ".a", "a b", "a/b", "../x", "/abs", "a/./b", "a//b", "x/", "..", ".", "...",
  "é", "😀", "\n", "a\tb", "\u007f", "any", "fly", "docker", "Docker", "true", "1", "__proto__",
  "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
  "2024-05-01T12:34:56Z", "2024-05-01T12:34:56.1234567890Z", "2024-05-01T12:34:56+0100"];
const LENGTHS = [0, 1, 55, 63, 64, 128, 129, 256, 257, 512, 513, 1024, 1025, 4096, 4097];
const NUMBERS = [0, 1, -1, 0.5, 1.5, 15, 16, 64, 64.5, 4096, 4097, 65536, 65537, 86400, 86401, 1048576, 1048577, 1e-7, 2 ** 53 + 2];
const NUMBER_TEXT = ["1e400", "-1e400", "1e-400", "-0", "5.0", "6e2", "0.1e1", "NaN", "01", "1.", ".5", "+1", "0x1", "1e", "-", "9223372036854775808", "123456789012345678901234567890"];
const NAMES = ["v", "job_id", "project_id", "command", "script", "env", "files", "image", "timeout_s", "resources", "network",
  "provider", "trace", "metadata", "submitted_at", "cpus", "memory_mb", "pids", "disk_mb", "traceparent", "tracestate", "extra", "Job_id"];
const INSERTS = [",", "}", "]", "{", "[", '"', "\\", ":", " ", "x", "\u0000", "\t", "\n", "//", "/*", "'", "\\u0000", "\\ud800", "\\udc00",
  "\\ud83d\\ude00", "\\u00e9", "\\x", "\ufeff", "\u00a0", "\u2028"];

function mutate(r, valid) {
  const pick = (a) => a[Math.floor(r() * a.length)];
  const randomString = () => (r() < 0.5 ? pick(STRINGS) : pick(["x", "é", "😀", "a/"]).repeat(pick(LENGTHS)));
  const randomValue = (depth = 0) => {
    const k = r();
    if (k < 0.35) return randomString();
    if (k < 0.6) return pick(NUMBERS);
    if (k < 0.68) return pick([true, false, null]);
    if (k < 0.84 && depth < 3) return Array.from({ length: Math.floor(r() * 3) }, () => randomValue(depth + 1));
    if (depth < 3) return Object.fromEntries(Array.from({ length: Math.floor(r() * 3) }, () => [r() < 0.5 ? pick(NAMES) : randomString(), randomValue(depth + 1)]));
    return randomString();
  };
  // Paths to every node, to pick a victim anywhere in the tree.
  const nodes = (v, at = []) => {
    const out = [at];
    if (v && typeof v === "object") for (const k of Object.keys(v)) out.push(...nodes(v[k], [...at, k]));
    return out;
  };
  const set = (root, at, val) => {
    if (at.length === 0) return val;
    let o = root;
    for (const k of at.slice(0, -1)) o = o[k];
    o[at[at.length - 1]] = val;
    return root;
  };
  const del = (root, at) => {
    let o = root;
    for (const k of at.slice(0, -1)) o = o[k];
    if (Array.isArray(o)) o.splice(Number(at[at.length - 1]), 1);
    else delete o[at[at.length - 1]];
  };

  const base = pick(valid);
  const text = base.toString("utf8");
  let v = JSON.parse(text);
  const op = Math.floor(r() * 12);
  switch (op) {
    case 0: case 1: case 2: { // replace any node
      const at = pick(nodes(v));
      v = set(v, at, randomValue());
      return Buffer.from(JSON.stringify(v));
    }
    case 3: { // delete any node
      const at = pick(nodes(v).filter((p) => p.length > 0));
      if (at) del(v, at);
      return Buffer.from(JSON.stringify(v));
    }
    case 4: { // add a member somewhere
      const objs = nodes(v).filter((p) => { let o = v; for (const k of p) o = o[k]; return o && typeof o === "object" && !Array.isArray(o); });
      const at = pick(objs);
      let o = v;
      for (const k of at) o = o[k];
      o[r() < 0.6 ? pick(NAMES) : randomString()] = randomValue();
      return Buffer.from(JSON.stringify(v));
    }
    case 5: { // a number written the way JSON.stringify never writes it
      const m = [...text.matchAll(/(?<=[:\[,]\s*)-?\d[\d.eE+-]*/g)];
      if (m.length === 0) return Buffer.from(text.replace(/}\s*$/, `,"timeout_s":${pick(NUMBER_TEXT)}}`));
      const x = pick(m);
      return Buffer.from(text.slice(0, x.index) + pick(NUMBER_TEXT) + text.slice(x.index + x[0].length));
    }
    case 6: { // insert text at a random place, often inside a string
      const i = Math.floor(r() * (text.length + 1));
      return Buffer.from(text.slice(0, i) + pick(INSERTS) + text.slice(i));
    }
    case 7: { // truncate or drop a byte
      const b = Buffer.from(base);
      const i = Math.floor(r() * b.length);
      return r() < 0.5 ? b.subarray(0, i) : Buffer.concat([b.subarray(0, i), b.subarray(i + 1)]);
    }
    case 8: { // a raw byte that may break UTF-8
      const b = Buffer.from(base);
      const i = Math.floor(r() * (b.length + 1));
      const bytes = pick([[0x80], [0xc0, 0xaf], [0xe9], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xf0, 0x9f, 0x98], [0xc3, 0xa9], [0xff], [0x00]]);
      return Buffer.concat([b.subarray(0, i), Buffer.from(bytes), b.subarray(i)]);
    }
    case 9: { // repeat a top-level name, escaped or not
      const name = pick(Object.keys(v));
      const spelled = r() < 0.3 ? JSON.stringify(name).replace(/[a-z]/, (c) => "\\u00" + c.charCodeAt(0).toString(16)) : JSON.stringify(name);
      return Buffer.from(text.replace("{", `{${spelled}:${JSON.stringify(randomValue())},`));
    }
    case 10: { // nesting around the parser's limit
      const d = 28 + Math.floor(r() * 10);
      const deep = "[".repeat(d) + (r() < 0.5 ? "" : "1") + "]".repeat(d - (r() < 0.2 ? 1 : 0));
      const where = pick(["metadata", "x", "command"]);
      return Buffer.from(text.replace(/}\s*$/, `,"${where}":${deep}}`));
    }
    default: { // whole-message edits
      const edits = [(t) => "\ufeff" + t, (t) => t + t, (t) => " \r\n" + t + "\n\t ", (t) => "[" + t + "]",
        (t) => t.replace(/"(job_id|project_id)":"[^"]*"/, `"$1":${JSON.stringify(randomString())}`),
        (t) => t.replace(/}\s*$/, `,"script":"true"}`), (t) => t.replace(/}\s*$/, `,"command":["x"]}`)];
      return Buffer.from(pick(edits)(text));
    }
  }
}

// ---- main ----

function main() {
  const opt = parseArgs(process.argv.slice(2));
  if (!fs.existsSync(opt.validator)) {
    console.error(`check.mjs: ${opt.validator} not found; build it with: make ${path.relative(repo, opt.validator)}`);
    process.exit(2);
  }
  const ajv = new Ajv2020({ strict: true, allErrors: false });
  addFormats(ajv);
  const schemas = {
    job: ajv.compile(JSON.parse(fs.readFileSync(path.join(repo, "schemas/job.v1.schema.json")))),
    dlq: ajv.compile(JSON.parse(fs.readFileSync(path.join(repo, "schemas/dlq.v1.schema.json")))),
    run: ajv.compile(JSON.parse(fs.readFileSync(path.join(repo, "schemas/run.v1.schema.json")))),
    log: ajv.compile(JSON.parse(fs.readFileSync(path.join(repo, "schemas/log.v1.schema.json")))),
    session: ajv.compile(JSON.parse(fs.readFileSync(path.join(repo, "schemas/session.v1.schema.json")))),
  };
  // run, log and session are what sbx reports, never messages it parses: no C
  // validator and no malformed text to refuse, so only valid/ and invalid/.
  const folders = { job: ["valid", "invalid", "malformed"], dlq: ["valid", "invalid", "malformed"],
    run: ["valid", "invalid"], log: ["valid", "invalid"], session: ["valid", "invalid"] };

  let passed = 0, failed = 0;
  const fail = (what) => { failed++; console.log(`FAIL ${what}`); };

  // Example vectors.
  const jobVectors = [];
  const validJobs = [];
  for (const kind of Object.keys(folders)) {
    for (const folder of folders[kind]) {
      const dir = path.join(repo, "schemas/examples", kind, folder);
      const names = fs.existsSync(dir) ? fs.readdirSync(dir).filter((n) => n.endsWith(".json")).sort() : [];
      if (names.length === 0) fail(`${kind}/${folder}: no vectors`);
      for (const name of names) {
        const file = path.join(dir, name);
        const bytes = fs.readFileSync(file);
        const ref = kind === "job" ? jobReference(bytes, schemas.job) : plainReference(bytes, schemas[kind]);
        const rel = `${kind}/${folder}/${name}`;
        if (!expectedByFolder[folder](ref)) {
          const why = ref === "schema_violation" ? ` (${ajv.errorsText(schemas[kind].errors)})` : "";
          fail(`${rel}: in ${folder}/ but the reference says ${ref}${why}`);
          continue;
        }
        if (kind === "job") {
          jobVectors.push({ file, rel, ref });
          if (folder === "valid") validJobs.push(bytes);
        } else {
          passed++;
          if (opt.verbose) console.log(`ok   ${rel}: ${ref}`);
        }
      }
    }
  }
  const cv = cVerdicts(opt.validator, jobVectors.map((v) => v.file));
  jobVectors.forEach((v, i) => {
    if (cv[i].verdict !== v.ref) fail(`${v.rel}: reference says ${v.ref}, C says ${cv[i].line}`);
    else {
      passed++;
      if (opt.verbose) console.log(`ok   ${v.rel}: ${cv[i].line}`);
    }
  });
  const examples = passed;

  // Mutants of the valid job vectors.
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "sbx-schema-"));
  try {
    const r = rng(opt.seed);
    const mutants = [];
    for (let i = 0; i < opt.mutants; i++) {
      const bytes = mutate(r, validJobs);
      const file = path.join(tmp, `m${i}.json`);
      fs.writeFileSync(file, bytes);
      mutants.push({ file, ref: jobReference(bytes, schemas.job) });
    }
    const mv = cVerdicts(opt.validator, mutants.map((m) => m.file));
    const tally = {};
    mutants.forEach((m, i) => {
      tally[m.ref] = (tally[m.ref] ?? 0) + 1;
      if (mv[i].verdict === m.ref) { passed++; return; }
      const bytes = fs.readFileSync(m.file);
      const shown = bytes.length > 300 ? bytes.subarray(0, 300).toString("hex") + "..." : bytes.toString("hex");
      fail(`mutant ${i} (seed ${opt.seed}): reference says ${m.ref}, C says ${mv[i].line}; bytes(hex)=${shown}`);
    });
    console.log(`examples: ${examples} agreed; mutants: ${JSON.stringify(tally)}`);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  console.log(`schema: ${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

main();
