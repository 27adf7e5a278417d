"""test_tls.py — TLS and authentication to the three services (README "TLS and
authentication"), against real endpoints with certificates made here:

- Kafka (sbxsvc tls=): a SASL_SSL listener (PLAIN and SCRAM-SHA-256) and an
  SSL listener that requires a client certificate; sbx-worker (consumer and
  dead-letter producer) and `sbx` connect with the SBX_KAFKA_* variables.
- PostgreSQL: ssl=on, pg_hba.conf takes only hostssl with a scram password;
  clients use sslmode=verify-full and sslrootcert in SBX_DATABASE_URL.
- Redis: requirepass plus a user made with ACL SETUSER; the URL carries the
  user and password (hiredis 0.14 has no TLS: see the README).

A job goes end to end over all three; a wrong password or a wrong CA ends
in one clear line from --check-config, `sbx`, or the running worker, and no
password is printed anywhere. The certificates (a CA, a second CA that
signed nothing here, the servers' certificate for localhost and 127.0.0.1,
a client certificate) are made with openssl in a temporary directory.
"""

import json
import os
import re
import subprocess
import tempfile
import urllib.parse

import pytest

import sbxsvc
from conftest import PG, REPO, SANITIZER_RE, wait_until
from test_hostile_redis import RedisClient
from test_worker import job, wait_terminal, workdir  # noqa: F401

SASL_USER = "alice"
SASL_PW = "al1ce-Pw!x7"
PG_PW = "pg:Pw@42/x"
REDIS_DEFAULT_PW = "redis-dflt-Pw9"
REDIS_USER = "sbxw"
REDIS_PW = "redis-acl-Pw3"
SECRETS = (SASL_PW, PG_PW, urllib.parse.quote(PG_PW, safe=""), REDIS_DEFAULT_PW, REDIS_PW)
OPENSSL_TIMEOUT = 60


def openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True, capture_output=True,
                   timeout=OPENSSL_TIMEOUT, stdin=subprocess.DEVNULL)


def make_pki(d):
    """Two CAs, a server certificate (localhost, 127.0.0.1) and a client
    certificate, both signed by the first CA. Returns {name: path}."""
    p = {n: os.path.join(d, n) for n in ("ca.pem", "ca.key", "wrong-ca.pem", "wrong-ca.key",
                                         "server.pem", "server.key", "client.pem", "client.key")}
    for ca in ("ca", "wrong-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-subj", "/CN=sbx test %s" % ca,
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout", p[ca + ".key"], "-out", p[ca + ".pem"])
    for name, cn, ext in (("server", "localhost",
                           "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
                          ("client", "sbx-worker", "extendedKeyUsage=clientAuth\n")):
        csr, extf = os.path.join(d, name + ".csr"), os.path.join(d, name + ".ext")
        with open(extf, "w") as f:
            f.write(ext)
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=" + cn,
                "-keyout", p[name + ".key"], "-out", csr)
        openssl("x509", "-req", "-in", csr, "-CA", p["ca.pem"], "-CAkey", p["ca.key"],
                "-CAcreateserial", "-days", "2", "-extfile", extf, "-out", p[name + ".pem"])
    return p


class Stack:
    """The TLS services and the settings that reach them."""

    def __init__(self, svc, pki, d):
        self.svc, self.pki, self.dir = svc, pki, d
        self.kafka, self.redis, self.pg = svc.svc["kafka"], svc.svc["redis"], svc.svc["postgres"]
        self.pw_file = os.path.join(d, "kafka-password")
        with open(self.pw_file, "w") as f:
            f.write(SASL_PW + "\n")
        os.chmod(self.pw_file, 0o600)
        self.db_url = self.pg.url
        self.redis_url = "redis://%s:%s@127.0.0.1:%d" % (REDIS_USER, REDIS_PW, self.redis.port)

    def sasl_env(self, mechanism="SCRAM-SHA-256", **over):
        env = {"SBX_BROKERS": self.kafka.sasl_brokers,
               "SBX_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
               "SBX_KAFKA_SASL_MECHANISM": mechanism,
               "SBX_KAFKA_SASL_USERNAME": SASL_USER,
               "SBX_KAFKA_SASL_PASSWORD_FILE": self.pw_file,
               "SBX_KAFKA_SSL_CA": self.pki["ca.pem"],
               "SBX_DATABASE_URL": self.db_url,
               "SBX_REDIS_URL": self.redis_url}
        env.update(over)
        return env

    def mtls_env(self, **over):
        env = {"SBX_BROKERS": self.kafka.ssl_brokers,
               "SBX_KAFKA_SECURITY_PROTOCOL": "ssl",
               "SBX_KAFKA_SSL_CA": self.pki["ca.pem"],
               "SBX_KAFKA_SSL_CERT": self.pki["client.pem"],
               "SBX_KAFKA_SSL_KEY": self.pki["client.key"],
               "SBX_DATABASE_URL": self.db_url,
               "SBX_REDIS_URL": self.redis_url}
        env.update(over)
        return env


def clean_env(extra):
    """The caller's environment without the session's SBX_* settings (whose
    plaintext brokers and URLs must not leak into these runs), plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SBX_")}
    env.update(SBX_TOPIC="sbx.jobs", SBX_DLQ_TOPIC="sbx.jobs.dlq")
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def tls():
    d = tempfile.mkdtemp(prefix="sbx-e2e-tls-")
    svc = sbxsvc.Services(keep=os.environ.get("SBX_KEEP_SERVICES") == "1")
    try:
        pki = make_pki(d)
        svc.start(redis_password=REDIS_DEFAULT_PW,
                  tls=dict(ca=pki["ca.pem"], cert=pki["server.pem"], key=pki["server.key"],
                           users={SASL_USER: SASL_PW}, pg_password=PG_PW))
        r = RedisClient(svc.svc["redis"].port, "default", REDIS_DEFAULT_PW)
        assert r.cmd("ACL", "SETUSER", REDIS_USER, "on", ">" + REDIS_PW, "~*", "&*",
                     "+@all") == "OK"
        r.close()
        stack = Stack(svc, pki, d)
        yield stack
    except sbxsvc.ServiceError as e:
        pytest.fail("TLS services did not start: %s" % e, pytrace=False)
    finally:
        svc.stop()
        subprocess.run(["rm", "-rf", d])


@pytest.fixture(scope="module")
def tls_pg(tls, sbx_bin):
    """`sbx migrate` over verify-full TLS with a scram password, then a PG
    helper on the same URL."""
    r = subprocess.run([str(sbx_bin / "sbx"), "migrate"], env=clean_env(tls.sasl_env()),
                       cwd=REPO, capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    h = PG(tls.db_url)
    yield h
    h.close()


def run(binary, args, env, timeout=60, input=None):
    r = subprocess.run([str(binary)] + list(args), env=clean_env(env), cwd=REPO, input=input,
                       capture_output=True, text=True, timeout=timeout,
                       stdin=None if input is not None else subprocess.DEVNULL)
    for s in SECRETS:
        assert s not in r.stdout + r.stderr, "a password was printed:\n" + r.stdout + r.stderr
    # Failures are expected here, so a sanitizer's exit status would pass unseen.
    assert not SANITIZER_RE.search(r.stderr), r.stderr
    return r


def check_config(sbx_bin, env):
    r = run(sbx_bin / "sbx-worker", ["--check-config"], env)
    problems = [l for l in r.stdout.splitlines() if ": PROBLEM: " in l]
    return r, problems


def test_check_config_all_ok_over_tls(tls, tls_pg, sbx_bin):
    """--check-config reaches all three: Kafka over SASL_SSL (SCRAM and PLAIN)
    and over TLS with a client certificate, PostgreSQL with verify-full,
    Redis as an ACL user; the printout hides every password."""
    for env in (tls.sasl_env(), tls.sasl_env("PLAIN"), tls.mtls_env()):
        r, problems = check_config(sbx_bin, env)
        assert r.returncode == 0 and not problems, r.stdout + r.stderr
        assert re.search(r"^kafka: ok, %s answered" % re.escape(env["SBX_BROKERS"]), r.stdout,
                         re.M), r.stdout
        assert "postgres: ok" in r.stdout and "redis: ok" in r.stdout, r.stdout
    r = run(sbx_bin / "sbx-worker", ["--check-config"],
            tls.sasl_env(SBX_KAFKA_SASL_PASSWORD=SASL_PW, SBX_KAFKA_SASL_PASSWORD_FILE=""))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SBX_KAFKA_SASL_PASSWORD=***" in r.stdout


@pytest.mark.parametrize("case", [
    ("kafka wrong password", {"SBX_KAFKA_SASL_PASSWORD_FILE": "wrong"},
     r"kafka: PROBLEM: .* refused the login \(.*SASL authentication error.*\); fix "
     r"SBX_KAFKA_SASL_MECHANISM"),
    ("kafka unknown user", {"SBX_KAFKA_SASL_USERNAME": "mallory"},
     r"kafka: PROBLEM: .* refused the login"),
    ("kafka wrong CA", {"SBX_KAFKA_SSL_CA": "wrong-ca"},
     r"kafka: PROBLEM: TLS to .* failed \(.*certificate verify failed.*\); fix SBX_KAFKA_SSL_CA"),
    ("kafka plaintext port", {"SBX_BROKERS": "plaintext"},
     r"kafka: PROBLEM: TLS to .* failed"),
    ("postgres wrong CA", {"SBX_DATABASE_URL": "wrong-ca"},
     r"postgres: PROBLEM: .*certificate verify failed; fix sslmode and sslrootcert"),
    ("postgres without TLS", {"SBX_DATABASE_URL": "disable"},
     r"postgres: PROBLEM: .*no pg_hba.conf entry.*no encryption; fix sslmode"),
    ("postgres wrong password", {"SBX_DATABASE_URL": "wrong-pw"},
     r"postgres: PROBLEM: .*password authentication failed.*; fix the user or password"),
    ("redis wrong password", {"SBX_REDIS_URL": "wrong-pw"},
     r"redis: PROBLEM: .*AUTH as user sbxw refused: .*fix the user and password"),
], ids=lambda c: c[0])
def test_check_config_wrong_credentials_one_line(tls, tls_pg, sbx_bin, case):
    """A wrong password or CA: --check-config fails with one PROBLEM line that
    says what to fix, and shows no password."""
    _, change, want = case
    env = tls.sasl_env()
    for k, v in change.items():
        if v == "wrong":
            wrong = os.path.join(tls.dir, "wrong-password")
            with open(wrong, "w") as f:
                f.write("not-the-password\n")
            env[k] = wrong
        elif v == "wrong-ca" and k == "SBX_KAFKA_SSL_CA":
            env[k] = tls.pki["wrong-ca.pem"]
        elif v == "wrong-ca":
            env[k] = tls.db_url.replace("ca.pem", "wrong-ca.pem")
        elif v == "disable":
            env[k] = tls.db_url.replace("sslmode=verify-full", "sslmode=disable")
        elif v == "wrong-pw" and k == "SBX_DATABASE_URL":
            env[k] = tls.db_url.replace(urllib.parse.quote(PG_PW, safe=""), "nope")
        elif v == "wrong-pw":
            env[k] = tls.redis_url.replace(REDIS_PW, "nope")
        elif v == "plaintext":
            env[k] = tls.kafka.brokers
        else:
            env[k] = v
    r, problems = check_config(sbx_bin, env)
    assert r.returncode == 1 and len(problems) == 1, r.stdout + r.stderr
    assert re.match(want, problems[0]), problems[0]


def test_start_up_refuses_incomplete_settings(tls, sbx_bin):
    """Settings that cannot work are refused before anything connects, one
    line each: SASL without a password, TLS files for a plaintext protocol,
    an unreadable CA file."""
    cases = [
        (tls.sasl_env(SBX_KAFKA_SASL_PASSWORD_FILE=""), r"needs the password in exactly one of"),
        (tls.sasl_env(SBX_KAFKA_SECURITY_PROTOCOL="plaintext", SBX_KAFKA_SASL_MECHANISM="",
                      SBX_KAFKA_SASL_USERNAME="", SBX_KAFKA_SASL_PASSWORD_FILE=""),
         r"SBX_KAFKA_SSL_CA is set but SBX_KAFKA_SECURITY_PROTOCOL=plaintext does not use TLS"),
        (tls.sasl_env(SBX_KAFKA_SSL_CA="/nonexistent/ca.pem"),
         r"SBX_KAFKA_SSL_CA=/nonexistent/ca.pem cannot be read"),
        (tls.sasl_env(SBX_KAFKA_SASL_MECHANISM="GSSAPI"), r"SBX_KAFKA_SASL_MECHANISM=GSSAPI: use"),
    ]
    for env, want in cases:
        r = run(sbx_bin / "sbx-worker", ["--check-config"], env)
        lines = r.stderr.strip().splitlines()
        assert r.returncode != 0 and len(lines) == 1 and re.search(want, lines[0]), \
            (want, r.stdout, r.stderr)
        r = run(sbx_bin / "sbx", ["enqueue", "--project", "p", "--", "true"], env)
        assert r.returncode == 2 and re.search(r"^sbx enqueue: .*" + want, r.stderr), r.stderr


def test_jobs_flow_over_tls_sasl_and_acl(tls, tls_pg, sbx_bin, start_worker, workdir):
    """sbx-worker on SASL_SSL (SCRAM-SHA-256, password from a file), verify-full
    PostgreSQL and an ACL Redis user runs jobs that `sbx` sent over SASL_SSL
    (PLAIN) and over TLS with a client certificate; a message it must refuse
    is dead-lettered through the dead-letter producer on the same TLS
    listener. No password appears in its log."""
    w = start_worker(SBX_WORK_DIR=workdir, SBX_TOPIC="sbx.jobs", SBX_DLQ_TOPIC="sbx.jobs.dlq",
                     SBX_GROUP="g-tls", **tls.sasl_env())
    w.wait_log(r"connected to redis at 127\.0\.0\.1:%d" % tls.redis.port, 30)
    jobs = [job("p-tls-%d" % i, "echo over-tls-%d" % i) for i in range(6)]
    plain = run(sbx_bin / "sbx", ["enqueue", "--json", "-"], tls.sasl_env("PLAIN"),
                input="".join(json.dumps(j) + "\n" for j in jobs[:3]))
    mtls = run(sbx_bin / "sbx", ["enqueue", "--json", "-"], tls.mtls_env(),
               input="".join(json.dumps(j) + "\n" for j in jobs[3:]))
    assert plain.returncode == 0 and mtls.returncode == 0, plain.stderr + mtls.stderr
    ids = [j["job_id"] for j in jobs]
    st = wait_terminal(tls_pg, ids, 90, [w])
    assert set(st.values()) == {"succeeded"}, (st, w.tail())
    tails = dict(tls_pg.query("SELECT job_id, log_tail FROM sbx.runs WHERE job_id = ANY(%s)", ids))
    assert all("over-tls-%d" % i in tails[j["job_id"]] for i, j in enumerate(jobs)), tails

    bad_id = "e2e-tls-bad-" + os.urandom(4).hex()
    raw = run(sbx_bin / "sbx", ["enqueue", "--raw", "--json", "-", "--project", "p-tls"],
              tls.sasl_env("PLAIN"), input='{"job_id": "%s", "bogus": 1}' % bad_id)
    assert raw.returncode == 0, raw.stderr
    # Published: the dead letter reached the DLQ topic over SASL_SSL.
    wait_until(lambda: tls_pg.scalar("SELECT published_at IS NOT NULL FROM sbx.dead_letters "
                                     "WHERE job_id = %s", bad_id), 60,
               "dead letter published\n" + w.tail())
    log = w.text()
    for s in SECRETS:
        assert s not in log, "worker log shows a password"


def test_running_worker_says_why_kafka_refuses(tls, tls_pg, start_worker, workdir):
    """A worker with a wrong SASL password keeps retrying (the broker side
    may be being fixed) and logs the refusal with the settings to check."""
    wrong = os.path.join(tls.dir, "wrong-password-2")
    with open(wrong, "w") as f:
        f.write("not-it\n")
    w = start_worker(SBX_WORK_DIR=workdir, SBX_GROUP="g-tls-wrong",
                     **tls.sasl_env(SBX_KAFKA_SASL_PASSWORD_FILE=wrong))
    m = w.wait_log(r"^.*_AUTHENTICATION: .*SASL authentication error.*; check "
                   r"SBX_KAFKA_SASL_MECHANISM, SBX_KAFKA_SASL_USERNAME and the password$", 60)
    assert "not-it" not in w.text() and SASL_PW not in w.text(), m.group(0)
    assert w.running
