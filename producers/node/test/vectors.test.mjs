// vectors.test.mjs — the shared job vectors through the client's own gate:
// every schemas/examples/job/valid/ job is accepted and every invalid/ one is
// refused by enqueue() before anything is sent (its "broker" is a listener
// that counts connections: none may come). Also: the fingerprint is
// libsbx's for the redaction rule's cases.
import assert from "node:assert/strict";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { SbxClient, JobInvalidError, validateJob, fingerprint } from "../dist/index.js";

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const dir = (f) => path.join(repo, "schemas/examples/job", f);
const vectors = (f) => fs.readdirSync(dir(f)).filter((n) => n.endsWith(".json")).sort()
  .map((n) => [n, JSON.parse(fs.readFileSync(path.join(dir(f), n), "utf8"))]);

test("valid job vectors are accepted", () => {
  const v = vectors("valid");
  assert.ok(v.length > 10);
  for (const [name, job] of v) assert.doesNotThrow(() => validateJob(job), name);
});

test("invalid job vectors are refused before anything is sent", async () => {
  const v = vectors("invalid");
  assert.ok(v.length > 10);
  // A listener standing in for the broker: it counts connections, so a
  // client that opened one (to fetch metadata, to send) is caught.
  let connections = 0;
  const server = net.createServer((s) => { connections++; s.destroy(); });
  await new Promise((res) => server.listen(0, "127.0.0.1", res));
  const c = new SbxClient({ brokers: `127.0.0.1:${server.address().port}`, topic: "none", ackTimeoutMs: 2000 });
  try {
    for (const [name, job] of v) {
      await assert.rejects(c.enqueue(job), (e) => e instanceof JobInvalidError && e.errors.length > 0, name);
    }
    await new Promise((res) => setTimeout(res, 200));
    assert.equal(connections, 0, "the client connected to the broker for an invalid job");
  } finally {
    await c.close();
    server.close();
  }
});

test("the fingerprint redacts env values and unknown members, as libsbx does", () => {
  const text = validateJob({ job_id: "j", project_id: "p", script: "echo /é\u2028\"\\\n\t\u0001", env: { B: "s1", A: "s2" }, metadata: { k: "v" } });
  const fp = fingerprint(text);
  assert.equal(fp.redacted, '{"job_id":"j","project_id":"p","script":"echo /é\u2028\\"\\\\\\n\\t\\u0001","env":{"B":"<redacted>","A":"<redacted>"},"metadata":{"k":"v"}}');
  const other = fingerprint(JSON.stringify({ ...JSON.parse(text), env: { B: "x", A: "y" } }));
  assert.equal(other.sha256, fp.sha256, "two messages differing only in env values are one job");
  assert.match(fp.sha256, /^[0-9a-f]{64}$/);
  assert.equal(JSON.parse(fingerprint('{"job_id":"j","secrets":{"a":1}}').redacted).secrets, "<redacted>");
  // "session" is kept, as libsbx keeps it: the session trigger reads it from sbx.runs.spec.
  assert.deepEqual(JSON.parse(fingerprint('{"job_id":"j","session":{"id":"dev"}}').redacted).session, { id: "dev" });
});
