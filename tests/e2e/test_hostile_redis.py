"""test_hostile_redis.py — Redis with a password: sbx-worker and sbx-agent
authenticate (AUTH pw, AUTH user pw) from SBX_REDIS_URL, a wrong or missing
password is one clear error naming SBX_REDIS_URL, and no password, in any of
the forms a setting may carry one, is ever printed by --check-config, the
start-up log or an error.

A private redis-server (sbxsvc, requirepass plus an ACL user limited to the
{sbx} keys) serves these tests; Kafka and PostgreSQL are the session's. The
passwords hold '@', ':', '/', '%', '#', '?' and '&' so the URL parser and
the redaction meet the hard cases with real programs.
"""

import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

import sbxsvc
from conftest import wait_until
from test_worker import enqueue, job, topics, wait_terminal, workdir  # noqa: F401

# requirepass (the default user) and the ACL user's password. Each is also
# looked for in every output in its percent-encoded form.
DEFAULT_PW = "dflt@pw:with/slash%40#?&end"
ACL_USER = "sbx"
ACL_PW = "acl:p@ss/w%rd"
ACL_RULE = "%s on >%s ~{sbx}* resetchannels -@all +@read +@write +@scripting +@connection " \
           "+@keyspace +@fast" % (ACL_USER, ACL_PW)
AGENT_KEY = "e2e-redisauth-service-key-0123456789"


def q(s):
    return urllib.parse.quote(s, safe="")


def secrets_of(*pws):
    """Every spelling of the passwords a leak could take (raw, encoded)."""
    out = set()
    for pw in pws:
        out |= {pw, q(pw), pw.replace("%", "%25")}
    return out


def assert_no_secret(text, secrets, what):
    for s in secrets:
        assert s not in text, "%s shows a password (%r):\n%s" % (what, s, text)


class RedisClient:
    """Just enough RESP to read what the programs wrote, with AUTH."""

    def __init__(self, port, user, pw):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.f = self.s.makefile("rb")
        assert self.cmd("AUTH", user, pw) == "OK"

    def cmd(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a.encode() if isinstance(a, str) else a
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.s.sendall(out)
        return self._read()

    def _read(self):
        line = self.f.readline().rstrip(b"\r\n")
        kind, rest = line[:1], line[1:].decode()
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RuntimeError(rest)
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)[:-2]
            return data.decode(errors="replace")
        if kind == b"*":
            return [self._read() for _ in range(int(rest))]
        raise RuntimeError("bad reply %r" % line)

    def close(self):
        self.f.close()
        self.s.close()


@pytest.fixture(scope="module")
def authed_redis():
    """A private redis-server with requirepass DEFAULT_PW and ACL user sbx."""
    svc = sbxsvc.Services(keep=os.environ.get("SBX_KEEP_SERVICES") == "1")
    try:
        svc.start(kafka=False, redis=True, postgres=False, redis_password=DEFAULT_PW,
                  redis_users=[ACL_RULE])
    except sbxsvc.ServiceError as e:
        pytest.fail("password redis did not start: %s" % e, pytrace=False)
    yield svc.svc["redis"]
    svc.stop()


def url_default(r):
    # Fully percent-encoded.
    return "redis://:%s@127.0.0.1:%d/0" % (q(DEFAULT_PW), r.port)


def url_acl(r):
    # Raw '@', ':' and '/' in the password: only '%' must be encoded.
    return "redis://%s:%s@127.0.0.1:%d/0" % (ACL_USER, ACL_PW.replace("%", "%25"), r.port)


def db_url_with_password(services, pw):
    """The session's PostgreSQL URL with a password it ignores (trust)."""
    u = services["SBX_DATABASE_URL"]
    return u.replace("postgres@", "postgres:%s@" % q(pw), 1)


@pytest.mark.parametrize("form", ["default", "acl"])
def test_worker_password_url_runs_job(authed_redis, services, run_sbx, pg, start_worker, topics,
                                      workdir, form):
    """sbx-worker with redis://:PW@ or redis://USER:PW@ takes a lease in the
    password-protected Redis and runs a job to succeeded; its log shows the
    URLs with *** and never a password (Redis' nor PostgreSQL's)."""
    url = url_default(authed_redis) if form == "default" else url_acl(authed_redis)
    db_pw = "pg:se@cret/%s" % form
    w = start_worker(SBX_REDIS_URL=url, SBX_DATABASE_URL=db_url_with_password(services, db_pw),
                     SBX_WORK_DIR=workdir, **topics)
    w.wait_log(r"connected to redis at 127\.0\.0\.1:%d" % authed_redis.port, 20)
    j = job("p-auth-" + form, "echo authed-%s" % form)
    ids = enqueue(run_sbx, topics, [j])
    st = wait_terminal(pg, ids, 60, [w])
    assert st[j["job_id"]] == "succeeded", w.tail()
    # The lease went through this Redis: the pool's slots are registered here.
    c = RedisClient(authed_redis.port, ACL_USER, ACL_PW)
    try:
        keys = c.cmd("KEYS", "{sbx}:slots:*")
    finally:
        c.close()
    assert keys, "no {sbx}:slots:* key in the password Redis"
    text = w.text()
    assert "redis=redis://%s:***@127.0.0.1:%d/0" % ("" if form == "default" else ACL_USER,
                                                   authed_redis.port) in text, text
    assert "postgres:***@127.0.0.1" in text
    assert_no_secret(text, secrets_of(DEFAULT_PW, ACL_PW, db_pw), w.name + " log")


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.parametrize("case", ["wrong_password", "wrong_user", "no_password"])
def test_worker_refused_says_so_once(authed_redis, start_worker, topics, workdir, case):
    """A refused AUTH (or a Redis that wants one we lack) logs one error
    naming SBX_REDIS_URL, however often the reconnect retries, /readyz says
    why Redis is down, and no password shows anywhere."""
    wrong = "Wr0ng@pw:/%25x"
    port = authed_redis.port
    url = {"wrong_password": "redis://:%s@127.0.0.1:%d" % (wrong, port),
           "wrong_user": "redis://nobody:%s@127.0.0.1:%d" % (q(ACL_PW), port),
           "no_password": "redis://127.0.0.1:%d" % port}[case]
    want = "wants a password" if case == "no_password" else "refused AUTH"
    admin = sbxsvc._free_port(set())
    w = start_worker(SBX_REDIS_URL=url, SBX_WORK_DIR=workdir,
                     SBX_ADMIN_LISTEN="127.0.0.1:%d" % admin, **topics)
    w.wait_log(r"error redis .*%s.*SBX_REDIS_URL" % want, 20)
    # Let the reconnect run a few more times (100 ms doubling): still one error.
    w.wait_log(r"debug redis .*%s" % want, 20)
    time.sleep(2)
    text = w.text()
    errors = [ln for ln in text.splitlines() if " error redis " in ln]
    assert len(errors) == 1, errors
    repeats = [ln for ln in text.splitlines() if " debug redis " in ln and want in ln]
    assert len(repeats) >= 2, text
    code, body = _get("http://127.0.0.1:%d/readyz" % admin)
    ready = json.loads(body)
    assert code == 503 and ready["redis"] == "down" and want in ready["redis_error"], body
    assert w.running
    assert_no_secret(text + body, secrets_of(wrong, ACL_PW, DEFAULT_PW), w.name + " log")


def _run(binary, args, env, timeout=20):
    full = dict(os.environ)
    for k in list(full):
        if k.startswith("SBX_"):
            del full[k]
    full.update(env)
    return subprocess.run([str(binary)] + args, env=full, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


# Every password form a setting may carry, and the secret each hides.
SETTING_FORMS = [
    ("SBX_REDIS_URL", "redis://:R1-p@ss:/%2540x@127.0.0.1:6379/1", "R1-p@ss:/"),
    ("SBX_REDIS_URL", "redis://sbx:R2-secret@127.0.0.1:6379/0", "R2-secret"),
    ("SBX_REDIS_URL", "unix:/run/redis.sock?db=1&password=R3-%2Fsecret&user=sbx", "R3-"),
    ("SBX_DATABASE_URL", "postgresql://sbx:P1-secret@db:5432/sbx", "P1-secret"),
    ("SBX_DATABASE_URL", "postgresql://sbx@db/sbx?sslmode=require&password=P2-secret", "P2-secret"),
    ("SBX_DATABASE_URL", "postgresql://sbx@db/sbx?sslpassword=P3-secret", "P3-secret"),
    ("SBX_DATABASE_URL", "host=db dbname=sbx password=P4-secret user=sbx", "P4-secret"),
    ("SBX_DATABASE_URL", "host=db password='P5 se\\'cret' dbname=sbx", "P5 se"),
    ("SBX_KAFKA_CONF", "security.protocol=sasl_plaintext,sasl.password=K1-secret", "K1-secret"),
]


@pytest.mark.parametrize("var,value,secret", SETTING_FORMS,
                         ids=["%s-%d" % (f[0], i) for i, f in enumerate(SETTING_FORMS)])
def test_worker_check_config_redacts(sbx_bin, var, value, secret):
    env = {"SBX_BROKERS": "127.0.0.1:9", "SBX_DATABASE_URL": "postgresql://sbx@db/sbx",
           "SBX_WORKER_ID": "w-check", var: value}
    r = _run(sbx_bin / "sbx-worker", ["--check-config"], env)
    # The settings are printed, then each service is tried (none of these
    # answer: exit 1), and neither part shows the secret.
    assert r.returncode == 1, r.stderr
    assert "%s=" % var in r.stdout and "***" in r.stdout, r.stdout
    assert_no_secret(r.stdout + r.stderr, {secret}, "sbx-worker --check-config")


@pytest.mark.parametrize("value,secret", [f[1:] for f in SETTING_FORMS if f[0] == "SBX_REDIS_URL"])
def test_agent_check_config_redacts(sbx_bin, value, secret):
    env = {"SBX_AGENT_KEY": AGENT_KEY, "SBX_REDIS_URL": value, "SBX_AGENT_ID": "vm-check"}
    r = _run(sbx_bin / "sbx-agent", ["--check-config"], env)
    assert r.returncode == 0, r.stderr
    assert "SBX_REDIS_URL=" in r.stdout and "***" in r.stdout, r.stdout
    assert AGENT_KEY not in r.stdout
    assert_no_secret(r.stdout + r.stderr, {secret}, "sbx-agent --check-config")


# URLs refused at start-up: the error names SBX_REDIS_URL, never the password.
BAD_URLS = [
    ("redis://:B1-secret@127.0.0.1:99999", "bad port", "B1-secret"),
    ("rediss://:B2-secret@127.0.0.1:6379", "hiredis", "B2-secret"),
    ("redis://B3-secret@127.0.0.1:6379", "a user needs a password", "B3-secret"),
    ("redis://:B4-sec%zzret@127.0.0.1", "two hex digits", "B4-sec"),
    ("unix:/s?password=B5-secret&bogus", "key=value", "B5-secret"),
]


@pytest.mark.parametrize("url,why,secret", BAD_URLS, ids=[str(i) for i in range(len(BAD_URLS))])
def test_bad_url_refused_without_password(sbx_bin, services, workdir, url, why, secret):
    env = dict(services, SBX_REDIS_URL=url, SBX_WORKER_ID="w-bad", SBX_LOCAL_SLOTS="1",
               SBX_WORK_DIR=workdir)
    r = _run(sbx_bin / "sbx-worker", [], env)
    assert r.returncode == 2, r.stderr
    assert "SBX_REDIS_URL=" in r.stderr and why in r.stderr, r.stderr
    assert_no_secret(r.stdout + r.stderr, {secret}, "sbx-worker start-up error")
    env = {"SBX_AGENT_KEY": AGENT_KEY, "SBX_REDIS_URL": url, "SBX_AGENT_ID": "vm-bad",
           "SBX_WORK_DIR": workdir, "SBX_AGENT_LISTEN": "127.0.0.1:%d"
           % sbxsvc._free_port(set())}
    r = _run(sbx_bin / "sbx-agent", [], env)
    assert r.returncode == 2, r.stderr
    assert "SBX_REDIS_URL=" in r.stderr and why in r.stderr, r.stderr
    assert_no_secret(r.stdout + r.stderr, {secret}, "sbx-agent start-up error")


class AgentProc:
    def __init__(self, binary, url, log):
        self.id = "vm-auth-%d" % os.getpid()
        self.work = tempfile.mkdtemp(prefix="sbx-e2e-authagent-")
        os.chmod(self.work, 0o755)
        self.log = log
        env = {"SBX_AGENT_ID": self.id, "SBX_AGENT_KEY": AGENT_KEY, "SBX_REDIS_URL": url,
               "SBX_AGENT_LISTEN": "127.0.0.1:%d" % sbxsvc._free_port(set()),
               "SBX_WORK_DIR": self.work, "SBX_AGENT_HEARTBEAT_MS": "200",
               "SBX_LOG_LEVEL": "debug", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([str(binary)], env=env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def text(self):
        return self.log.read_text(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        subprocess.run(["rm", "-rf", self.work])


@pytest.fixture
def start_agent(sbx_bin, tmp_path):
    started = []

    def start(url):
        a = AgentProc(sbx_bin / "sbx-agent", url, tmp_path / ("agent-%d.log" % len(started)))
        started.append(a)
        return a

    yield start
    for a in started:
        a.stop()


def test_agent_registers_with_acl_user(authed_redis, start_agent):
    """sbx-agent with redis://USER:PW@ registers its VM in the password
    Redis; its log shows the URL with *** and no password."""
    a = start_agent(url_acl(authed_redis))
    c = RedisClient(authed_redis.port, ACL_USER, ACL_PW)
    try:
        wait_until(lambda: c.cmd("HGET", "{sbx}:vm:" + a.id, "heartbeat_ms"), 20,
                   "agent registered in the password Redis")
    finally:
        c.close()
    text = a.text()
    assert "redis=redis://sbx:***@127.0.0.1:%d/0" % authed_redis.port in text, text
    assert_no_secret(text, secrets_of(ACL_PW, DEFAULT_PW), "sbx-agent log")


def test_agent_wrong_password_says_so(authed_redis, start_agent):
    wrong = "Ag-wr0ng:p@ss"
    a = start_agent("redis://sbx:%s@127.0.0.1:%d" % (wrong, authed_redis.port))
    wait_until(lambda: "refused AUTH as user sbx" in a.text(), 20, "the agent's AUTH error")
    assert a.proc.poll() is None
    text = a.text()
    assert "SBX_REDIS_URL" in text
    assert_no_secret(text, secrets_of(wrong, ACL_PW, DEFAULT_PW), "sbx-agent log")
