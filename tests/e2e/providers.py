"""providers.py — the four build backends of sbx-worker, as test fixtures.

Owns what test_providers.py needs to run the same scenarios on every
provider: starting each backend once (a private Podman service for `docker`,
a private dockerd for `dockerd`, the docker provider on Docker Engine itself,
the Fly Machines emulator for `fly`, a few sbx-agent processes for
`vmpool`; nothing for `local`), the worker settings that point at it, and a
provider-side view of the sandboxes a job left behind, so a test can say
"the sandbox is gone" from what the backend itself reports — the engine's
container list, the emulator's machine list, the agent's or host's process
table — rather than from our own database.

Why it is shaped so: backends take seconds to start and are independent of
the job topics, so they live for the module (one per provider), while
workers live for a test. Every process started here is in its own session
and is stopped at teardown by its pid, even when a test failed. Every wait
has a deadline.

Everything runs on this host, so a job's processes are also visible in the
host's process table whatever the provider; scripts carry a unique marker
(the argument of their `sleep`) that `pgrep -f` can look for.
"""

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from conftest import REPO, SANITIZER_RE, build_dir, uid_base, wait_until

# Test parameters: the provider kinds, the docker one twice (one per engine).
PROVIDERS = ("local", "docker", "dockerd", "fly", "vmpool")

# uid ranges of sandbox builds, disjoint from test_worker.py's (60000.., 61000..)
# and from each other: each range's uids must belong to one process only.
LOCAL_UID_BASE = 62000          # start_worker() adds the shift
AGENT_UID_BASE = uid_base(62100)         # agent k gets AGENT_UID_BASE + 100 * k
FLY_TOKEN = "e2e-fly-token"
AGENT_KEY = "e2e-vmpool-service-key-0123456789"
# Stopping a backend: SIGTERM, then SIGKILL to its session after this.
STOP_GRACE_S = 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_proc(proc, grace=STOP_GRACE_S):
    """SIGTERM to the process, SIGKILL to its session after `grace` s."""
    if proc is None:
        return
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


def pgrep(pattern):
    """pids (as str) of processes whose command line matches pattern."""
    r = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, timeout=10)
    return [p for p in r.stdout.split() if p and int(p) != os.getpid()]


def http(method, url, body=None, headers=None, timeout=10):
    """(status, parsed JSON or text) of one HTTP request; errors are statuses."""
    data = None if body is None else json.dumps(body).encode()
    h = dict(headers or {})
    if data is not None:
        h["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw) if raw.strip() else None
    except ValueError:
        return status, raw.decode(errors="replace")


class Backend:
    """One provider's backend. Subclasses fill in env() and sandboxes()."""

    name = "?"

    def __init__(self, logdir):
        self.logdir = Path(logdir)

    @property
    def key(self):
        """The test parameter (PROVIDERS) this backend stands for."""
        return self.name

    def env(self):
        """Worker settings (beyond services/topics) that select this backend."""
        raise NotImplementedError

    def sandboxes(self, job_id):
        """Descriptions of this job's sandboxes the backend still holds."""
        raise NotImplementedError

    def instance_alive(self, instance):
        """Whether the sandbox named by runs.instance still exists."""
        return False

    def describe(self):
        return self.name

    def stop(self):
        pass

    def sanitizer_reports(self):
        """Logs of our own programs (sbx-agent) that hold a sanitizer report."""
        return []


def live_sandboxes(backend, job_id, marker):
    """Everything still alive of one job: the backend's view plus host
    processes carrying the marker."""
    out = list(backend.sandboxes(job_id))
    out += ["process %s" % p for p in pgrep(marker)] if marker else []
    return out


# --- local: bubblewrap on this host ----------------------------------------------

class LocalBackend(Backend):
    name = "local"

    def __init__(self, logdir):
        super().__init__(logdir)
        # Builds run as unprivileged slot uids: the workspace parent must be
        # traversable by them.
        self.work = tempfile.mkdtemp(prefix="sbx-e2e-local-")
        os.chmod(self.work, 0o755)

    def env(self):
        return {"SBX_PROVIDER": "local", "SBX_LOCAL_SLOTS": "2", "SBX_NODE": "e2e-prov-local",
                "SBX_UID_BASE": str(LOCAL_UID_BASE), "SBX_WORK_DIR": self.work}

    def sandboxes(self, job_id):
        return []       # the host's process table is the backend: see live_sandboxes()

    def stop(self):
        shutil.rmtree(self.work, ignore_errors=True)


# --- docker: a private Podman service, or a private dockerd --------------------------

class DockerBackend(Backend):
    name = "docker"
    API = "http://d/v1.41"      # both engines here serve 1.41 (the provider negotiates)

    def __init__(self, logdir, engine="podman"):
        super().__init__(logdir)
        self.engine = engine
        script = {"podman": "tests/services/podman/podman-service.sh",
                  "dockerd": "tests/services/dockerd/dockerd-service.sh"}[engine]
        envfile = self.logdir / ("%s.env" % engine)
        self.log = self.logdir / ("%s-service.log" % engine)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                ["sh", str(REPO / script), "--env-file", str(envfile)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        try:
            def ready():
                if self.proc.poll() is not None:
                    raise RuntimeError("%s exited %s:\n%s"
                                       % (script, self.proc.returncode, self.log.read_text()))
                return envfile.exists()
            wait_until(ready, 90, "the %s service" % engine)
            kv = dict(l.split("=", 1) for l in envfile.read_text().split())
            self.sock = kv["SBX_TEST_DOCKER_SOCK"]
            self.image = kv["SBX_TEST_DOCKER_IMAGE"]
        except BaseException:
            _stop_proc(self.proc)
            raise

    def env(self):
        host = "pm" if self.engine == "podman" else "dd"
        return {"SBX_PROVIDER": "docker", "SBX_DOCKER_HOSTS": "%s=unix://%s@2" % (host, self.sock),
                "SBX_DOCKER_IMAGE": self.image}

    def api(self, method, path, timeout=10):
        """(status, parsed body) of one Engine API call through the socket."""
        r = subprocess.run(["curl", "-s", "--max-time", str(timeout), "--unix-socket", self.sock,
                            "-X", method, "-w", "\n%{http_code}", self.API + path],
                           capture_output=True, text=True, timeout=timeout + 5)
        body, _, code = r.stdout.rpartition("\n")
        try:
            parsed = json.loads(body) if body.strip() else None
        except ValueError:
            parsed = body
        return int(code or 0), parsed

    def containers(self, label):
        q = urllib.parse.quote(json.dumps({"label": [label]}))
        st, body = self.api("GET", "/containers/json?all=1&filters=" + q)
        if st != 200:
            raise RuntimeError("container list: %s %s" % (st, body))
        return body

    def sandboxes(self, job_id):
        return ["container %s (%s)" % (c["Id"][:12], c.get("State"))
                for c in self.containers("sbx.job=" + job_id)]

    def instance_alive(self, instance):
        st, _ = self.api("GET", "/containers/%s/json" % instance)
        return st == 200

    def kill(self, container_id):
        st, body = self.api("POST", "/containers/%s/kill?signal=SIGKILL" % container_id)
        if st not in (204, 200):
            raise RuntimeError("kill %s: %s %s" % (container_id, st, body))

    def describe(self):
        return "docker (%s at %s)" % (self.engine, self.sock)

    @property
    def key(self):
        return "docker" if self.engine == "podman" else self.engine

    def stop(self):
        _stop_proc(self.proc, grace=30)


# --- fly: the Machines API emulator ---------------------------------------------------

class FlyBackend(Backend):
    name = "fly"

    def __init__(self, logdir):
        super().__init__(logdir)
        self.app = "sbx-e2e-" + uuid.uuid4().hex[:8]
        self.log = self.logdir / "flyemu.log"
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(REPO / "tests/flyemu/flyemu.py"), "--port", "0",
                 "--print-port", "--token", FLY_TOKEN, "--regions", "iad=8,ord=8",
                 "--destroyed-grace-ms", "1000"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                start_new_session=True)
        try:
            # The first line is the port; python gets there well within 20 s.
            ready, _, _ = select.select([self.proc.stdout], [], [], 20)
            line = self.proc.stdout.readline().decode().strip() if ready else ""
            if not line.isdigit():
                raise RuntimeError("flyemu did not print its port:\n" + self.log.read_text())
            self.base = "http://127.0.0.1:%s" % line
        except BaseException:
            _stop_proc(self.proc)
            raise

    def env(self):
        return {"SBX_PROVIDER": "fly", "SBX_FLY_API_URL": self.base + "/v1",
                "SBX_FLY_APP": self.app, "SBX_FLY_API_TOKEN": FLY_TOKEN,
                "SBX_FLY_REGIONS": "iad,ord", "SBX_FLY_MAX_MACHINES": "4",
                "SBX_FLY_IMAGE": "registry.fly.io/sbx-e2e:latest",
                "SBX_FLY_LOGS_URL": self.base}

    def machines(self, **metadata):
        """The app's machines that are not destroyed, filtered by metadata,
        through the documented list endpoint."""
        q = urllib.parse.urlencode({"metadata." + k: v for k, v in metadata.items()})
        st, body = http("GET", "%s/v1/apps/%s/machines?%s" % (self.base, self.app, q),
                        headers={"Authorization": "Bearer " + FLY_TOKEN})
        if st != 200:
            raise RuntimeError("machine list: %s %s" % (st, body))
        return body

    def sandboxes(self, job_id):
        return ["machine %s (%s)" % (m["id"], m["state"]) for m in self.machines(sbx_job=job_id)]

    def instance_alive(self, instance):
        st, body = http("GET", "%s/v1/apps/%s/machines/%s" % (self.base, self.app, instance),
                        headers={"Authorization": "Bearer " + FLY_TOKEN})
        return st == 200 and body.get("state") != "destroyed"

    def fail(self, machine_id):
        st, body = http("POST", "%s/_emu/fail/%s" % (self.base, machine_id))
        if st != 200:
            raise RuntimeError("fail %s: %s %s" % (machine_id, st, body))

    def describe(self):
        return "fly (emulator at %s, app %s)" % (self.base, self.app)

    def stop(self):
        _stop_proc(self.proc)
        if self.proc.stdout:
            self.proc.stdout.close()


# --- vmpool: sbx-agent processes ---------------------------------------------------------

class Agent:
    def __init__(self, k, redis_url, logdir, tag):
        self.id = "e2e-vm-%s-%d" % (tag, k)
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.work = tempfile.mkdtemp(prefix="sbx-e2e-agent-")
        os.chmod(self.work, 0o755)
        self.log = Path(logdir) / ("agent-%d.log" % k)
        self.env = dict(os.environ, SBX_AGENT_ID=self.id,
                        SBX_AGENT_LISTEN="127.0.0.1:%d" % self.port, SBX_REDIS_URL=redis_url,
                        SBX_AGENT_KEY=AGENT_KEY, SBX_AGENT_CAPACITY="2",
                        SBX_WORK_DIR=self.work, SBX_UID_BASE=str(AGENT_UID_BASE + 100 * k),
                        # A killed agent leaves the pool within ~1.5 s.
                        SBX_AGENT_HEARTBEAT_MS="300", SBX_AGENT_TTL_MS="1500",
                        SBX_SHUTDOWN_GRACE_MS="2000", SBX_LOG_LEVEL="debug")
        self.redis_url = redis_url
        self.proc = None

    def start(self):
        t0 = self._redis_ms()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([str(build_dir() / "bin" / "sbx-agent")], env=self.env,
                                         stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

        def registered():
            if self.proc.poll() is not None:
                raise RuntimeError("sbx-agent %s exited %s:\n%s"
                                   % (self.id, self.proc.returncode, self.log.read_text()))
            hb = self._hget("heartbeat_ms")
            return hb and int(hb) >= t0 and self._hget("base_url") == self.url
        wait_until(registered, 20, "agent %s registered" % self.id)

    def _redis(self, *args):
        r = subprocess.run(["redis-cli", "-u", self.redis_url, "--raw"] + list(args),
                           capture_output=True, text=True, timeout=10)
        return r.stdout.strip()

    def _hget(self, field):
        return self._redis("HGET", "{sbx}:vm:" + self.id, field)

    def _redis_ms(self):
        sec, usec = self._redis("TIME").split()
        return int(sec) * 1000 + int(usec) // 1000

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def kill9(self):
        self.proc.kill()
        self.proc.wait(10)

    def running_runs(self):
        """The agent's own view: its running runs (GET /health, GET /runs/{id})."""
        auth = {"Authorization": "Bearer " + AGENT_KEY}
        st, body = http("GET", self.url + "/health", headers=auth, timeout=5)
        if st != 200:
            raise RuntimeError("agent %s /health: %s %s" % (self.id, st, body))
        out = []
        for run_id in body.get("running") or []:
            st, run = http("GET", "%s/runs/%s" % (self.url, run_id), headers=auth, timeout=5)
            if st == 200:
                out.append(run)
        return out

    def restart(self, **env):
        """SIGTERM and start again with env over the settings (same id,
        port, work dir and uids); the sessions it held die with it."""
        _stop_proc(self.proc)
        self.env.update({k: str(v) for k, v in env.items()})
        self.start()

    def stop(self):
        _stop_proc(self.proc)
        shutil.rmtree(self.work, ignore_errors=True)


class VmpoolBackend(Backend):
    name = "vmpool"

    def __init__(self, logdir, redis_url, n=3):
        super().__init__(logdir)
        self.tag = uuid.uuid4().hex[:6]
        self.redis_url = redis_url
        self.agents = [Agent(k, redis_url, logdir, self.tag) for k in range(n)]
        try:
            for a in self.agents:
                a.start()
        except BaseException:
            self.stop()
            raise

    def env(self):
        return {"SBX_PROVIDER": "vmpool", "SBX_VMPOOL_KEY": AGENT_KEY}

    def agent(self, vm_id):
        return next(a for a in self.agents if a.id == vm_id)

    def ensure_running(self):
        """Restarts agents an earlier test killed (same id, port and uids)."""
        for a in self.agents:
            if not a.running:
                a.start()

    def set_warm(self, n):
        """The warm pool of vmpool lives on the agents (SBX_AGENT_WARM; the
        worker's SBX_WARM does not apply): restarts every agent with n."""
        for a in self.agents:
            if a.env.get("SBX_AGENT_WARM", "0") != str(n) or not a.running:
                a.restart(SBX_AGENT_WARM=n)

    def sandboxes(self, job_id):
        return ["run %s on %s (%s)" % (r["id"], a.id, r["state"])
                for a in self.agents if a.running
                for r in a.running_runs() if r.get("job_id") == job_id]

    def describe(self):
        return "vmpool (%s)" % ", ".join("%s@%s" % (a.id, a.url) for a in self.agents)

    def stop(self):
        for a in self.agents:
            a.stop()

    def sanitizer_reports(self):
        return [str(a.log) for a in self.agents
                if a.log.exists() and SANITIZER_RE.search(a.log.read_text(errors="replace"))]


def start_backend(name, logdir, services):
    if name == "local":
        return LocalBackend(logdir)
    if name == "docker":
        return DockerBackend(logdir)
    if name == "dockerd":
        return DockerBackend(logdir, engine="dockerd")
    if name == "fly":
        return FlyBackend(logdir)
    if name == "vmpool":
        return VmpoolBackend(logdir, services["SBX_REDIS_URL"])
    raise ValueError(name)
