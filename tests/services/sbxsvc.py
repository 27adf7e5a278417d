#!/usr/bin/env python3
"""sbxsvc.py — real Kafka, Redis and PostgreSQL for sbx's tests and demos.

Owns the lifetime of one private instance of each server: free 127.0.0.1
ports, a temporary directory holding their data and logs, readiness checks
that talk each server's own protocol, restarts for chaos tests, and a
teardown that leaves no process and no file behind.

Why it is shaped so:
- Startup time is the price of every test session, and Kafka's JVM dominates
  it, so the three start in parallel. They are not threads: each service's
  start is a generator of short, bounded steps (spawn, probe, set up) and one
  loop in the caller's thread round-robins them against per-service
  deadlines. Spawning every server from that one long-lived thread is what
  lets PR_SET_PDEATHSIG (through `setpriv --pdeathsig KILL`) take the servers
  down with us even when we are SIGKILLed; a signal set by a short-lived
  thread would fire when that thread ends.
- Each server runs in its own session, so a Ctrl-C in the terminal reaches
  us, not them, and teardown signals the whole process group (PostgreSQL's
  backends, the JVM's helpers).
- Readiness is what a client needs, not an open port: Redis answers PING;
  PostgreSQL runs a query and has database `sbx`; Kafka answers ApiVersions,
  has created sbx.jobs (8 partitions) and sbx.jobs.dlq (1) with a leader for
  every partition, and answers FindCoordinator for a group, which creates
  __consumer_offsets before the first consumer waits on it. The Kafka
  requests are a few lines of its wire protocol (old, stable versions),
  because starting the JVM admin tools costs seconds each.
- A port chosen by bind-to-0 can be taken by someone else before the server
  binds it; a server that dies with "Address already in use" is started
  again on fresh ports, at most three times.

- Redis may be started with a password (requirepass, off by default) and
  ACL users, so the clients' AUTH is tested against the real server; the
  URL in the env then carries the password (percent-encoded).
- With tls= (certificates the caller made), Kafka adds an SSL listener that
  requires a client certificate and a SASL_SSL one (PLAIN and SCRAM-SHA-256
  users), and PostgreSQL turns on ssl with a pg_hba.conf that takes only
  hostssl connections with a scram-sha-256 password. The probes and set-up
  keep their own paths (Kafka's PLAINTEXT listener, PostgreSQL's socket),
  so readiness means the same with and without it.

Library:  env = Services(tmpdir).start(kafka=True, redis=True, postgres=True)
          ... services.restart("redis"); services.stop()   (or `with`)
          Services().start(kafka=False, postgres=False, redis_password="pw",
                           redis_users=["sbx on >pw2 ~{sbx}* +@all"])
          Services().start(tls=dict(ca=CA, cert=CRT, key=KEY,
                                    users={"alice": "pw"}, pg_password="pw"))
CLI:      sbxsvc.py run [--no-kafka] [--no-redis] [--no-postgres]
                        [--redis-password PW] -- CMD ...
          sbxsvc.py env [...]      prints `export` lines, serves until killed
Python 3.11 standard library only.
"""

import argparse
import base64
import os
import pwd
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
# The address every server binds and every client here uses. --host changes
# it for a test that runs the services in a network namespace of its own
# and reaches them from others (tests/e2e/test_multihost.py).
HOST = "127.0.0.1"
TOPICS = {"sbx.jobs": 8, "sbx.jobs.dlq": 1}
DATABASE = "sbx"
TAIL_LINES = 30
PORT_RETRIES = 3
# A cold fetch of the Kafka jars from Maven Central (~50 MB) on a slow link.
FETCH_TIMEOUT = 900
# Yielded by a start generator: its deadline starts again from now.
RESET_DEADLINE = "reset-deadline"


class ServiceError(Exception):
    """A service failed to start or stop; the message carries its log tail."""


def _log(msg):
    print("sbxsvc: " + msg, file=sys.stderr, flush=True)


def _tail(path, n=TAIL_LINES):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError as e:
        return "(cannot read %s: %s)" % (path, e)
    return "\n".join(lines[-n:])


def _ephemeral_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def _free_port(taken):
    """A port that is free now, chosen below the kernel's ephemeral range:
    there no outgoing connection's local port can take it while a server is
    down for a restart, as one in the range could."""
    lo, _ = _ephemeral_range()
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(10000, lo) if lo > 11000 else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            port = s.getsockname()[1]
        if port not in taken:
            taken.add(port)
            return port
    raise ServiceError("no free port found")


def _connects(port, timeout=0.5):
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


# --- processes ----------------------------------------------------------------

class _Proc:
    """One server process in its own session, output appended to a log."""

    def __init__(self, argv, log, user=None, env=None, cwd=None):
        self.argv = argv
        self.log = log
        wrap = []
        # PDEATHSIG follows the thread that forked; only the main thread is
        # sure to outlive the servers. setpriv runs after the uid change, so
        # the setting survives (a credential change would clear it).
        if shutil.which("setpriv") and threading.current_thread() is threading.main_thread():
            wrap = ["setpriv", "--pdeathsig", "KILL", "--"]
        kw = {}
        if user is not None:
            pw = pwd.getpwnam(user)
            kw = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        with open(log, "ab") as out:
            out.write(("\n=== %s %s\n" % (time.strftime("%H:%M:%S"), " ".join(argv))).encode())
            out.flush()
            self.p = subprocess.Popen(wrap + argv, stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                      start_new_session=True, **kw)
        self.pid = self.p.pid

    def exited(self):
        return self.p.poll() is not None

    def signal(self, sig):
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, sig, timeout):
        """Signal the group, wait up to timeout, then SIGKILL what is left."""
        self.signal(sig)
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        # The leader may be gone while children of its group linger.
        self.signal(signal.SIGKILL)
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            raise ServiceError("pid %d survived SIGKILL for 10 s" % self.pid)
        _wait_group_gone(self.pid, 10)


def _wait_group_gone(pgid, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            return
        time.sleep(0.02)
    raise ServiceError("process group %d still alive %d s after SIGKILL" % (pgid, timeout))


def _pause(seconds):
    """Yields for about `seconds` without blocking the other services."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        yield


def _remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _port_clash(log):
    t = _tail(log, 200)
    return "Address already in use" in t or "could not bind" in t.lower()


# --- services -----------------------------------------------------------------

class _Service:
    """Base: a named server with a directory, a log and a start generator."""
    name = ""
    deadline = 60.0

    def __init__(self, root, taken):
        self.root = root
        self.taken = taken
        self.dir = os.path.join(root, self.name)
        self.log = os.path.join(root, self.name + ".log")
        self.proc = None
        self.ready = False
        self.last_error = ""
        # After the first start clients know the ports: restarts keep them.
        self.fixed_ports = False

    def _fail(self, what):
        raise ServiceError("%s: %s\n--- last %d lines of %s ---\n%s"
                           % (self.name, what, TAIL_LINES, self.log, _tail(self.log)))

    def _check_alive(self):
        if self.proc is not None and self.proc.exited():
            self._fail("exited with status %s" % self.proc.p.returncode)

    def _run_to_end(self, proc, what):
        """Yields until a one-shot helper (initdb, format) exits; fails on error."""
        while not proc.exited():
            yield
        if proc.p.returncode != 0:
            self._fail("%s exited with status %d" % (what, proc.p.returncode))

    def start_steps(self):
        """A generator: each next() does a short bounded step; ends when ready."""
        raise NotImplementedError

    def down(self, hard):
        raise NotImplementedError

    def _launch_with_retries(self, spawn, probe):
        """Spawns the server and yields until probe() is true, moving to fresh
        ports when the chosen ones turned out to be taken."""
        for attempt in range(PORT_RETRIES):
            self.proc = spawn()
            while True:
                if self.proc.exited():
                    if _port_clash(self.log) and attempt + 1 < PORT_RETRIES:
                        if self.fixed_ports:
                            _log("%s: port still taken, trying it again" % self.name)
                            yield from _pause(1.0)
                        else:
                            _log("%s: port taken, retrying on new ports" % self.name)
                            self.new_ports()
                        break
                    self._check_alive()
                if probe():
                    self.fixed_ports = True
                    return
                yield
        self._fail("could not bind after %d tries" % PORT_RETRIES)


def _resp(*args):
    """One Redis command in RESP, binary-safe."""
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a.encode() if isinstance(a, str) else a
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


class Redis(_Service):
    """password: requirepass (the default user's password), None for none.
    users: ACL rules, one string per user ("sbx on >pw ~{sbx}* +@all")."""
    name = "redis"
    deadline = 30.0

    def __init__(self, root, taken, password=None, users=()):
        super().__init__(root, taken)
        self.port = _free_port(taken)
        self.password = password
        self.users = list(users)

    def new_ports(self):
        self.port = _free_port(self.taken)

    @property
    def url(self):
        if self.password:
            return "redis://:%s@%s:%d" % (urllib.parse.quote(self.password, safe=""),
                                           HOST, self.port)
        return "redis://%s:%d" % (HOST, self.port)

    def _spawn(self):
        argv = ["redis-server", "--port", str(self.port), "--bind", HOST,
                "--save", "", "--appendonly", "no", "--dir", self.dir,
                "--daemonize", "no", "--protected-mode", "no"]
        if self.password:
            argv += ["--requirepass", self.password]
        for rule in self.users:
            # redis-server joins the words after --user into one config line.
            argv += ["--user"] + rule.split()
        return _Proc(argv, self.log)

    def ping(self):
        try:
            with socket.create_connection((HOST, self.port), timeout=1) as s:
                if self.password:
                    s.sendall(_resp("AUTH", self.password))
                    if not s.recv(64).startswith(b"+OK"):
                        return False
                s.sendall(_resp("PING"))
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def start_steps(self):
        os.makedirs(self.dir, exist_ok=True)
        yield from self._launch_with_retries(self._spawn, self.ping)

    def down(self, hard):
        # Without persistence SIGTERM and SIGKILL lose the same (everything);
        # SIGKILL is the crash a chaos test wants and the fastest teardown.
        if self.proc:
            self.proc.stop(signal.SIGKILL if hard else signal.SIGTERM, 10)
            self.proc = None


class Postgres(_Service):
    """tls: None, or {"ca", "cert", "key" (PEM files: the CA, the server's
    certificate and key), "pg_password"}: ssl=on, TCP takes only hostssl
    with user postgres' scram password, and url says sslmode=verify-full.
    settings: extra server settings {name: value}, passed as -c name=value
    after ours (the bench loads pg_stat_statements so)."""
    name = "postgres"
    deadline = 90.0

    def __init__(self, root, taken, tls=None, settings=None):
        super().__init__(root, taken)
        self.settings = dict(settings or {})
        self.port = _free_port(taken)
        self.data = os.path.join(self.dir, "data")
        self.sock = os.path.join(self.dir, "sock")
        # initdb and postgres refuse to run as root.
        self.user = "postgres" if os.geteuid() == 0 else None
        self.bindir = _pg_bindir()
        self.tls = tls

    def new_ports(self):
        self.port = _free_port(self.taken)

    @property
    def url(self):
        if self.tls:
            return "postgresql://postgres:%s@127.0.0.1:%d/%s?sslmode=verify-full&sslrootcert=%s" % (
                urllib.parse.quote(self.tls["pg_password"], safe=""), self.port, DATABASE,
                urllib.parse.quote(self.tls["ca"], safe="/"))
        return "postgresql://postgres@%s:%d/%s" % (HOST, self.port, DATABASE)

    def psql(self, sql, db="postgres", timeout=10):
        """Runs sql through psql over TCP (with tls: the socket, which
        pg_hba.conf trusts); returns (returncode, output)."""
        host = self.sock if self.tls else HOST
        r = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                            "-h", host, "-p", str(self.port), "-U", "postgres",
                            "-d", db, "-c", sql],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=timeout, env=dict(os.environ, PGCONNECT_TIMEOUT="5"))
        return r.returncode, (r.stdout + r.stderr).strip()

    def _spawn(self):
        return _Proc([os.path.join(self.bindir, "postgres"), "-D", self.data,
                      "-p", str(self.port), "-k", self.sock,
                      "-c", "listen_addresses=" + HOST,
                      # Durability is under test: keep the real commit path.
                      "-c", "fsync=on", "-c", "synchronous_commit=on",
                      "-c", "full_page_writes=on",
                      # Load tests run many workers, each with a connection.
                      "-c", "max_connections=200",
                      "-c", "logging_collector=off", "-c", "log_destination=stderr"]
                     + self._tls_args()
                     + [a for k, v in self.settings.items() for a in ("-c", "%s=%s" % (k, v))],
                     self.log, user=self.user, cwd=self.dir)

    def _owned(self, path, text, mode):
        """Writes a file the server (user postgres when we are root) reads."""
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        if self.user:
            pw = pwd.getpwnam(self.user)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def _tls_args(self):
        if not self.tls:
            return []
        crt, key, hba = (os.path.join(self.dir, n) for n in ("server.crt", "server.key", "pg_hba.conf"))
        with open(self.tls["cert"]) as f:
            self._owned(crt, f.read(), 0o644)
        with open(self.tls["key"]) as f:
            # The server refuses a key others can read.
            self._owned(key, f.read(), 0o600)
        # No hostnossl line: plain TCP is refused ("no encryption").
        self._owned(hba, "local all all trust\n"
                         "hostssl all all 127.0.0.1/32 scram-sha-256\n", 0o644)
        return ["-c", "ssl=on", "-c", "ssl_cert_file=" + crt, "-c", "ssl_key_file=" + key,
                "-c", "hba_file=" + hba, "-c", "password_encryption=scram-sha-256"]

    def _answers(self):
        if not _connects(self.port):
            return False
        try:
            rc, out = self.psql("SELECT 1")
        except subprocess.TimeoutExpired:
            rc, out = 1, "psql timed out"
        self.last_error = "" if rc == 0 else out
        return rc == 0 and out == "1"

    def start_steps(self):
        if not os.path.isdir(self.data):
            for d in (self.dir, self.data, self.sock):
                os.makedirs(d, mode=0o700, exist_ok=True)
                if self.user:
                    pw = pwd.getpwnam(self.user)
                    os.chown(d, pw.pw_uid, pw.pw_gid)
            # --no-sync only skips initdb's final flush; the server runs with fsync=on.
            init = _Proc([os.path.join(self.bindir, "initdb"), "-D", self.data, "-U", "postgres",
                          "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync",
                          "--no-instructions"], self.log, user=self.user, cwd=self.dir)
            yield from self._run_to_end(init, "initdb")
            if HOST != "127.0.0.1":
                # initdb trusts loopback only; the clients are on HOST's subnet.
                with open(os.path.join(self.data, "pg_hba.conf"), "a") as f:
                    f.write("host all all samenet trust\n")
        else:
            # The old server is gone (its process group was waited for), so
            # its lock files are stale. Left in place they name a PID that a
            # busy machine may already have given to another process, and
            # the server would refuse to start.
            _remove(os.path.join(self.data, "postmaster.pid"))
            for n in os.listdir(self.sock):
                if n.endswith(".lock"):
                    _remove(os.path.join(self.sock, n))
        yield from self._launch_with_retries(self._spawn, self._answers)
        while True:
            self._check_alive()
            try:
                rc, out = self.psql("SELECT 1 FROM pg_database WHERE datname = '%s'" % DATABASE)
                if rc == 0 and out != "1":
                    rc, out = self.psql("CREATE DATABASE " + DATABASE)
                    if rc != 0 and "already exists" in out:
                        rc = 0
                if rc == 0 and self.tls:
                    rc, out = self.psql("ALTER ROLE postgres PASSWORD '%s'"
                                        % self.tls["pg_password"].replace("'", "''"))
            except subprocess.TimeoutExpired:
                rc, out = 1, "psql timed out"
            if rc == 0:
                return
            self.last_error = out
            yield

    def down(self, hard):
        # SIGINT is a fast shutdown (checkpoint, clean restart); SIGKILL is a
        # crash, and the next start replays the WAL, as after a power loss.
        if self.proc:
            self.proc.stop(signal.SIGKILL if hard else signal.SIGINT, 30)
            self.proc = None

    def teardown(self):
        # SIGQUIT: immediate shutdown; unlike SIGKILL it also removes the
        # server's System V shared memory segment.
        if self.proc:
            self.proc.stop(signal.SIGQUIT, 10)
            self.proc = None


def _pg_bindir():
    for d in ("/usr/lib/postgresql/15/bin",):
        if os.path.exists(os.path.join(d, "postgres")):
            return d
    initdb = shutil.which("initdb")
    if initdb:
        return os.path.dirname(os.path.realpath(initdb))
    raise ServiceError("postgres: no PostgreSQL server binaries (install postgresql-15: sh docker/install-deps.sh)")


class Kafka(_Service):
    """tls: None, or {"ca", "cert", "key" (PEM files: the CA and the broker's
    certificate), "users" {name: password}}: two more listeners, SSL
    (ssl_brokers; a client certificate signed by the CA is required) and
    SASL_SSL (sasl_brokers; PLAIN and SCRAM-SHA-256, the same users)."""
    name = "kafka"
    deadline = 90.0

    def __init__(self, root, taken, tls=None):
        super().__init__(root, taken)
        self.tls = tls
        self.new_ports()
        self.props = os.path.join(self.dir, "server.properties")
        self.data = os.path.join(self.dir, "data")
        self.libs = None

    def new_ports(self):
        self.port = _free_port(self.taken)
        self.cport = _free_port(self.taken)
        if self.tls:
            self.ssl_port = _free_port(self.taken)
            self.sasl_port = _free_port(self.taken)

    @property
    def brokers(self):
        return "%s:%d" % (HOST, self.port)

    @property
    def ssl_brokers(self):
        return "127.0.0.1:%d" % self.ssl_port

    @property
    def sasl_brokers(self):
        return "127.0.0.1:%d" % self.sasl_port

    def _tls_config(self, cfg):
        """The SSL and SASL_SSL listeners; PLAINTEXT stays for our probes and
        between broker and controller."""
        t = self.tls
        keystore = os.path.join(self.dir, "broker-keystore.pem")
        with open(keystore, "w") as out:
            for path in (t["key"], t["cert"]):
                with open(path) as f:
                    out.write(f.read())
        os.chmod(keystore, 0o600)
        cfg["listeners"] += ",SSL://127.0.0.1:%d,SASL_SSL://127.0.0.1:%d" % (self.ssl_port,
                                                                             self.sasl_port)
        cfg["advertised.listeners"] += ",SSL://127.0.0.1:%d,SASL_SSL://127.0.0.1:%d" % (
            self.ssl_port, self.sasl_port)
        cfg["listener.security.protocol.map"] += ",SSL:SSL,SASL_SSL:SASL_SSL"
        cfg["ssl.keystore.type"] = "PEM"
        cfg["ssl.keystore.location"] = keystore
        cfg["ssl.truststore.type"] = "PEM"
        cfg["ssl.truststore.location"] = t["ca"]
        cfg["listener.name.ssl.ssl.client.auth"] = "required"
        cfg["listener.name.sasl_ssl.sasl.enabled.mechanisms"] = "PLAIN,SCRAM-SHA-256"
        users = " ".join('user_%s="%s"' % (u, p) for u, p in t["users"].items())
        cfg["listener.name.sasl_ssl.plain.sasl.jaas.config"] = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required %s;" % users)
        cfg["listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config"] = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;")

    def _scram_args(self):
        """StorageTool format arguments that create the SCRAM users (KRaft
        keeps them in the metadata log, written at format time)."""
        args = []
        for u, p in (self.tls or {}).get("users", {}).items():
            args += ["--add-scram", "SCRAM-SHA-256=[name=%s,password=%s]" % (u, p)]
        return args

    def _write_config(self):
        cfg = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": "1@%s:%d" % (HOST, self.cport),
            "listeners": "PLAINTEXT://%s:%d,CONTROLLER://%s:%d" % (HOST, self.port, HOST, self.cport),
            "advertised.listeners": "PLAINTEXT://%s:%d" % (HOST, self.port),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": self.data,
            "num.partitions": "8",
            "auto.create.topics.enable": "true",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            # 50 by default; fewer makes the first group join quicker.
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # Failover tests want consumers with short session timeouts.
            "group.min.session.timeout.ms": "1000",
            # A SIGKILLed broker may register again only once its old session
            # expired (DUPLICATE_BROKER_REGISTRATION until then): 9 s by
            # default. 6 s still rides out a loaded machine's pauses.
            "broker.session.timeout.ms": "6000",
            "broker.heartbeat.interval.ms": "1000",
            # Two cores: the defaults (3 network, 8 I/O threads) only contend.
            "num.network.threads": "2",
            "num.io.threads": "4",
        }
        if self.tls:
            self._tls_config(cfg)
        with open(self.props, "w") as f:
            f.writelines("%s=%s\n" % kv for kv in cfg.items())
        with open(os.path.join(self.dir, "log4j.properties"), "w") as f:
            f.write("log4j.rootLogger=INFO, out\n"
                    "log4j.appender.out=org.apache.log4j.ConsoleAppender\n"
                    "log4j.appender.out.layout=org.apache.log4j.PatternLayout\n"
                    "log4j.appender.out.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
                    "log4j.logger.kafka.request.logger=WARN\n"
                    "log4j.logger.state.change.logger=WARN\n"
                    "log4j.logger.org.apache.kafka.raft=WARN\n"
                    "log4j.logger.org.apache.kafka.controller=WARN\n")

    def _java(self, main, args, heap):
        java = os.path.join(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") else "java"
        jtmp = os.path.join(self.dir, "tmp")
        os.makedirs(jtmp, exist_ok=True)
        return [java, "-Xmx" + heap, "-Xms" + heap,
                # No /tmp/hsperfdata_* left behind by a SIGKILLed JVM, and
                # native libraries (snappy, zstd) unpack into our directory.
                "-XX:-UsePerfData", "-Djava.io.tmpdir=" + jtmp,
                "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
                "-Dlog4j.configuration=file:" + os.path.join(self.dir, "log4j.properties"),
                "-cp", os.path.join(self.libs, "*"), main] + args

    def _spawn(self):
        self._write_config()
        return _Proc(self._java("kafka.Kafka", [self.props], "512m"), self.log, cwd=self.dir)

    def _answers(self):
        try:
            with _KafkaConn(self.port, 2.0) as k:
                return k.api_versions_ok()
        except (OSError, ValueError):
            return False

    def start_steps(self):
        if self.libs is None:
            yield from self._fetch()
            # The first fetch downloads ~50 MB; the broker's own deadline
            # starts after it.
            yield RESET_DEADLINE
        if not os.path.isdir(self.data):
            os.makedirs(self.dir, exist_ok=True)
            self._write_config()
            fmt = _Proc(self._java("kafka.tools.StorageTool",
                                   ["format", "-t", _cluster_id(), "-c", self.props]
                                   + self._scram_args(), "256m"),
                        self.log, cwd=self.dir)
            yield from self._run_to_end(fmt, "kafka.tools.StorageTool format")
        yield from self._launch_with_retries(self._spawn, self._answers)
        yield from self._setup_topics()
        while self.tls and not (_connects(self.ssl_port) and _connects(self.sasl_port)):
            self._check_alive()
            yield

    def _setup_topics(self):
        """Creates the topics (idempotent), then waits until every partition
        has a leader and the group coordinator answers."""
        pending = dict(TOPICS)
        while True:
            self._check_alive()
            try:
                with _KafkaConn(self.port, 5.0) as k:
                    if pending:
                        for name, err in k.create_topics(pending, 3000):
                            # 0 created, 36 already exists; others (controller
                            # moving, timed out) are retried.
                            if err in (0, 36):
                                pending.pop(name, None)
                    if not pending and k.topics_led(TOPICS) and k.find_coordinator("sbx-workers") == 0:
                        return
            except (OSError, ValueError):
                pass
            yield

    def down(self, hard):
        # SIGTERM is a controlled shutdown (clean logs, quick restart);
        # SIGKILL is a crash and the restart recovers the logs.
        if self.proc:
            self.proc.stop(signal.SIGKILL if hard else signal.SIGTERM, 30)
            self.proc = None


    def _fetch(self):
        """Runs fetch-kafka.sh (instant when cached) without blocking the
        other services; its messages go to the log."""
        os.makedirs(self.dir, exist_ok=True)
        with open(self.log, "ab") as err:
            p = subprocess.Popen(["sh", os.path.join(HERE, "fetch-kafka.sh")],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        until = time.monotonic() + FETCH_TIMEOUT
        try:
            while p.poll() is None:
                if time.monotonic() > until:
                    self._fail("fetch-kafka.sh took over %d s" % FETCH_TIMEOUT)
                yield
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        out = p.stdout.read().decode().strip()
        p.stdout.close()
        libs = out.splitlines()[-1] if out else ""
        if p.returncode != 0 or not os.path.isdir(libs):
            self._fail("tests/services/fetch-kafka.sh failed (status %d)" % p.returncode)
        self.libs = libs


def create_topics(brokers, topics, timeout=30.0):
    """Creates topics {name: partitions} (replication 1) on the broker at
    "host:port" and waits until every partition has a leader. Existing topics
    are fine. Raises ServiceError after timeout seconds."""
    port = int(brokers.rsplit(":", 1)[1])
    pending = dict(topics)
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            with _KafkaConn(port, 5.0) as k:
                if pending:
                    for name, err in k.create_topics(pending, 5000):
                        if err in (0, 36):
                            pending.pop(name, None)
                        else:
                            last = "%s: error code %d" % (name, err)
                if not pending and k.topics_led(topics):
                    return
        except (OSError, ValueError) as e:
            last = str(e)
        if time.monotonic() > deadline:
            raise ServiceError("topics %s not ready after %.0f s (%s)" % (sorted(topics), timeout, last))
        time.sleep(0.05)


def _cluster_id():
    # Kafka's own Uuid.toString(): URL-safe base64 of 16 bytes, no padding;
    # like Uuid.randomUuid() avoid a leading '-' (it would parse as an option).
    while True:
        s = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not s.startswith("-"):
            return s


# --- a few requests of the Kafka protocol ---------------------------------------
# Request header v1: api_key int16, api_version int16, correlation_id int32,
# client_id string; response header v0: correlation_id int32. Strings are an
# int16 length then bytes, arrays an int32 count then elements.

API_METADATA, API_FIND_COORDINATOR, API_VERSIONS, API_CREATE_TOPICS = 3, 10, 18, 19


def _str(s):
    b = s.encode()
    return struct.pack(">h", len(b)) + b


class _Reader:
    def __init__(self, buf):
        self.buf, self.at = buf, 0

    def take(self, fmt):
        v = struct.unpack_from(fmt, self.buf, self.at)
        self.at += struct.calcsize(fmt)
        return v[0]

    def string(self):
        n = self.take(">h")
        if n < 0:
            return None
        s = self.buf[self.at:self.at + n].decode()
        self.at += n
        return s


class _KafkaConn:
    def __init__(self, port, timeout):
        self.s = socket.create_connection((HOST, port), timeout=timeout)
        self.corr = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.s.close()

    def _recv(self, n):
        out = b""
        while len(out) < n:
            chunk = self.s.recv(n - len(out))
            if not chunk:
                raise ValueError("kafka closed the connection")
            out += chunk
        return out

    def request(self, api, version, body):
        self.corr += 1
        msg = struct.pack(">hhi", api, version, self.corr) + _str("sbxsvc") + body
        self.s.sendall(struct.pack(">i", len(msg)) + msg)
        size = struct.unpack(">i", self._recv(4))[0]
        # Our responses are a few kilobytes; anything huge is not Kafka.
        if not 4 <= size <= 1 << 20:
            raise ValueError("bad response size %d" % size)
        r = _Reader(self._recv(size))
        if r.take(">i") != self.corr:
            raise ValueError("correlation id mismatch")
        return r

    def api_versions_ok(self):
        return self.request(API_VERSIONS, 0, b"").take(">h") == 0

    def create_topics(self, topics, timeout_ms):
        body = struct.pack(">i", len(topics))
        for name, parts in topics.items():
            # name, partitions, replication factor, no assignments, no configs
            body += _str(name) + struct.pack(">ihii", parts, 1, 0, 0)
        body += struct.pack(">i", timeout_ms)
        r = self.request(API_CREATE_TOPICS, 0, body)
        return [(r.string(), r.take(">h")) for _ in range(r.take(">i"))]

    def metadata(self, names):
        body = struct.pack(">i", len(names)) + b"".join(_str(n) for n in names)
        r = self.request(API_METADATA, 1, body)
        for _ in range(r.take(">i")):              # brokers
            r.take(">i"); r.string(); r.take(">i"); r.string()
        r.take(">i")                               # controller id
        topics = {}
        for _ in range(r.take(">i")):
            err, name, _internal = r.take(">h"), r.string(), r.take(">b")
            parts = []
            for _ in range(r.take(">i")):
                perr, idx, leader = r.take(">h"), r.take(">i"), r.take(">i")
                for _ in range(r.take(">i")):      # replicas
                    r.take(">i")
                for _ in range(r.take(">i")):      # isr
                    r.take(">i")
                parts.append((idx, perr, leader))
            topics[name] = (err, parts)
        return topics

    def topics_led(self, want):
        """True when each topic exists with its partition count, all led."""
        got = self.metadata(list(want))
        for name, n in want.items():
            err, parts = got.get(name, (-1, []))
            if err != 0 or len(parts) != n or any(perr != 0 or leader < 0 for _, perr, leader in parts):
                return False
        return True

    def find_coordinator(self, group):
        return self.request(API_FIND_COORDINATOR, 0, _str(group)).take(">h")


# --- what a SIGKILLed predecessor left ------------------------------------------
# The servers die with us (PDEATHSIG), but a SIGKILL gives us no chance to
# remove our directory or PostgreSQL's System V segment. The next start does.

TMP_PREFIX = "sbx-svc-"
OWNER_FILE = "owner.pid"


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _sweep_stale():
    try:
        names = [n for n in os.listdir("/tmp") if n.startswith(TMP_PREFIX)]
    except OSError:
        return
    for n in names:
        root = os.path.join("/tmp", n)
        try:
            with open(os.path.join(root, OWNER_FILE)) as f:
                pid = int(f.read().strip() or 0)
            if pid <= 0 or _pid_alive(pid) or os.stat(root).st_uid != os.geteuid():
                continue
        except (OSError, ValueError):
            continue
        try:
            # postmaster.pid line 7: "<shm key> <shm id>".
            with open(os.path.join(root, "postgres", "data", "postmaster.pid")) as f:
                shmid = f.read().splitlines()[6].split()[1]
            if shutil.which("ipcrm"):
                subprocess.run(["ipcrm", "-m", shmid], stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=10)
        except (OSError, IndexError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(root, ignore_errors=True)
        _log("removed %s left by dead pid %d" % (root, pid))


# --- the set of services --------------------------------------------------------

class Services:
    """Real Kafka, Redis and PostgreSQL under one temporary directory.

    Start, stop and restart must be called from one thread (normally the main
    one), which must outlive the servers: see the design note at the top.
    """

    def __init__(self, tmpdir=None, keep=False):
        self.own_tmp = tmpdir is None
        if self.own_tmp:
            _sweep_stale()
        self.root = tmpdir or tempfile.mkdtemp(prefix=TMP_PREFIX, dir="/tmp")
        self.keep = keep
        os.makedirs(self.root, exist_ok=True)
        with open(os.path.join(self.root, OWNER_FILE), "w") as f:
            f.write("%d\n" % os.getpid())
        # PostgreSQL runs as user postgres and must reach its directory.
        os.chmod(self.root, 0o755)
        self.taken = set()
        self.svc = {}
        self.env = {}
        self.timings = {}
        self.stopped = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self, kafka=True, redis=True, postgres=True, redis_password=None, redis_users=(),
              tls=None, pg_settings=None):
        """Starts the chosen services in parallel; returns the env dict.
        redis_password / redis_users: see Redis (default: no password).
        pg_settings: see Postgres' settings (default: none).
        tls: see Kafka and Postgres (default: none); the env keeps Kafka's
        PLAINTEXT listener in SBX_BROKERS."""
        started = []
        if kafka:
            started.append(Kafka(self.root, self.taken, tls))
        if redis:
            started.append(Redis(self.root, self.taken, redis_password, redis_users))
        if postgres:
            started.append(Postgres(self.root, self.taken, tls, pg_settings))
        for s in started:
            self.svc[s.name] = s
        try:
            self._run_steps(started)
        except BaseException:
            # Keep the logs: the error names them.
            self.stop(keep_logs=True)
            raise
        self._make_env()
        return dict(self.env)

    def _run_steps(self, services):
        t0 = time.monotonic()
        gens = {s: (s.start_steps(), t0 + s.deadline) for s in services}
        while gens:
            for s, (g, deadline) in list(gens.items()):
                try:
                    if next(g) == RESET_DEADLINE:
                        gens[s] = (g, time.monotonic() + s.deadline)
                        continue
                except StopIteration:
                    s.ready = True
                    self.timings[s.name] = time.monotonic() - t0
                    del gens[s]
                    continue
                if time.monotonic() > deadline:
                    s._fail("not ready after %.0f s%s" % (
                        s.deadline, " (last error: %s)" % s.last_error if s.last_error else ""))
            if gens:
                # Polling interval between probes; every wait is bounded by
                # the per-service deadline above.
                time.sleep(0.05)
        self.timings["total"] = time.monotonic() - t0

    def _make_env(self):
        env = {}
        if "kafka" in self.svc:
            env["SBX_BROKERS"] = self.svc["kafka"].brokers
            env["SBX_TOPIC"] = "sbx.jobs"
            env["SBX_DLQ_TOPIC"] = "sbx.jobs.dlq"
        if "redis" in self.svc:
            env["SBX_REDIS_URL"] = self.svc["redis"].url
        if "postgres" in self.svc:
            env["SBX_DATABASE_URL"] = self.svc["postgres"].url
        self.env = env

    def timing_line(self):
        parts = ["%s %.1f s" % (k, v) for k, v in self.timings.items() if k != "total"]
        return "services ready in %.1f s (%s)" % (self.timings.get("total", 0.0), ", ".join(parts))

    def logs(self):
        return {name: s.log for name, s in self.svc.items()}

    def down(self, name, hard=False):
        """Stops one service; hard=True is a SIGKILL crash."""
        self.svc[name].down(hard)

    def up(self, name):
        """Starts a stopped service again on the same ports and data."""
        s = self.svc[name]
        s.ready = False
        self._run_steps([s])

    def restart(self, name, hard=False):
        self.down(name, hard)
        self.up(name)

    def stop(self, keep_logs=False):
        """Stops everything (all signalled first, then waited for) and removes
        the directory, or with keep_logs all but the *.log files. Safe to
        call twice."""
        if self.stopped:
            return
        self.stopped = True
        errors = []
        for s in self.svc.values():
            # Teardown needs no graceful shutdown: the data is thrown away.
            if s.proc:
                if isinstance(s, Postgres):
                    s.proc.signal(signal.SIGQUIT)
                else:
                    s.proc.signal(signal.SIGKILL)
        for s in self.svc.values():
            try:
                if isinstance(s, Postgres):
                    s.teardown()
                else:
                    s.down(hard=True)
            except ServiceError as e:
                errors.append(str(e))
        if not self.keep:
            if self.own_tmp and not keep_logs:
                shutil.rmtree(self.root, ignore_errors=True)
            else:
                for s in self.svc.values():
                    shutil.rmtree(s.dir, ignore_errors=True)
        if errors:
            raise ServiceError("; ".join(errors))


# --- command line ------------------------------------------------------------------

def _on_term(signum, frame):
    raise SystemExit(128 + signum)


def _start_from_args(a):
    svc = Services(keep=a.keep)
    try:
        env = svc.start(kafka=not a.no_kafka, redis=not a.no_redis, postgres=not a.no_postgres,
                        redis_password=a.redis_password)
    except ServiceError as e:
        _log("start failed: %s" % e)
        _log("logs kept: %s" % " ".join(svc.logs().values()))
        raise SystemExit(1)
    except KeyboardInterrupt:
        raise SystemExit(130)
    _log(svc.timing_line())
    return svc, env


def main(argv=None):
    global HOST
    ap = argparse.ArgumentParser(usage="%(prog)s {run,env} [--no-kafka] [--no-redis] [--no-postgres] "
                                       "[--redis-password PW] [--keep] [--host ADDR] [-- CMD ...]",
                                 description="Run real Kafka, Redis and PostgreSQL for sbx.")
    ap.add_argument("mode", choices=["run", "env"])
    ap.add_argument("--no-kafka", action="store_true")
    ap.add_argument("--no-redis", action="store_true")
    ap.add_argument("--no-postgres", action="store_true")
    ap.add_argument("--redis-password", metavar="PW",
                    help="start Redis with requirepass PW (SBX_REDIS_URL carries it)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--host", metavar="ADDR", default=HOST,
                    help="bind the servers to ADDR instead of 127.0.0.1")
    argv = sys.argv[1:] if argv is None else argv
    cmd = []
    if "--" in argv:
        at = argv.index("--")
        argv, cmd = argv[:at], argv[at + 1:]
    a = ap.parse_args(argv)
    HOST = a.host
    if a.mode == "run" and not cmd:
        ap.error("run needs a command after --")
    if a.mode == "env" and cmd:
        ap.error("env takes no command")

    # SIGTERM and SIGHUP unwind like Ctrl-C, through the finally below.
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGHUP, _on_term)
    svc, env = _start_from_args(a)
    rc = 0
    try:
        if a.mode == "env":
            for k, v in env.items():
                print("export %s=%s" % (k, v))
            for name, path in svc.logs().items():
                print("# %s log: %s" % (name, path))
            print("# serving until interrupted (Ctrl-C)", flush=True)
            while True:
                signal.pause()
        child = subprocess.Popen(cmd, env=dict(os.environ, **env))
        try:
            rc = child.wait()
        except BaseException:
            # Ctrl-C reached the child too (same process group); SIGTERM did
            # not: pass it on and give the command a moment to finish.
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(10)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
            raise
        if rc < 0:
            rc = 128 - rc
    except KeyboardInterrupt:
        rc = 130
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    finally:
        svc.stop()
    return rc


if __name__ == "__main__":
    sys.exit(main())
