"""Plumbing for the data-plane suite: a local Ray head, the Serve REST API as KubeRay uses it,
bounded polling, and the stray-process check.

Everything here talks to loopback only: the dashboard and the Serve proxy listen on 127.0.0.1.
When the suite runs inside its own network namespace (``make test-dataplane`` does that with
``unshare -n`` where it can), Ray's internal services end up on 127.0.0.1 too, because Ray finds no
routable address there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

# e2e/ is on sys.path (e2e/conftest.py): one polling and one port helper for every suite.
from harness.polling import WaitTimeoutError, wait_for
from harness.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
STATUS_FIXTURES = ROOT / "tests" / "fixtures" / "serve_status"
SERVE_API = "/api/serve/applications/"

#: Environment every Ray process (and so every vLLM engine) of the suite inherits.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}

#: Headers every dashboard call of the suite sends: ``x-ray-authorization: Bearer <token>`` once
#: the head runs with Ray token auth, exactly as KubeRay's dashboard client does
#: (``controllers/ray/utils/dashboardclient/dashboard_httpclient.go``).
_DASHBOARD_HEADERS: dict[str, str] = {}


def dashboard_headers() -> dict[str, str]:
    return dict(_DASHBOARD_HEADERS)


#: Names of the processes a Ray head and Serve LLM replicas run as.
RAY_PROCESS_MARKERS = ("ray", "raylet", "gcs_server", "VLLM::", "ray::")


#: A bounded wait ran out (the harness's error; an AssertionError).
PollTimeout = WaitTimeoutError


def poll(
    probe: Callable[[], Any],
    *,
    timeout: float,
    interval: float = 2.0,
    what: str,
) -> Any:
    """Call ``probe`` until it returns something truthy; fail after ``timeout`` seconds.

    ``probe`` may raise ``httpx.TransportError`` while a server comes up; that counts as "not yet".
    The harness's ``wait_for`` with this suite's rules.
    """
    return wait_for(
        what,
        probe,
        timeout=timeout,
        interval=interval,
        max_interval=interval,
        retry_on=(httpx.TransportError,),
        done=bool,
    )


# --------------------------------------------------------------------------------------------
# Processes


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(comm, session id) of a process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    return comm, int(fields[3])  # state ppid pgrp session ...


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    comm: str
    cmdline: str

    def __str__(self) -> str:
        return f"{self.pid} {self.comm} {self.cmdline[:160]}"


def processes_of(session_id: int, marker_paths: Iterable[str] = ()) -> list[ProcInfo]:
    """Live processes in session ``session_id`` or whose command line names one of the paths."""
    markers = [m for m in marker_paths if m]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        stat = _proc_stat(pid)
        if stat is None:
            continue
        comm, sid = stat
        cmd = _cmdline(pid)
        if not cmd:  # zombie or kernel thread
            continue
        if sid == session_id or any(m in cmd for m in markers):
            found.append(ProcInfo(pid, comm, cmd))
    return found


# --------------------------------------------------------------------------------------------
# The Ray head


@dataclass
class RayHead:
    """``ray start --head --block`` in its own session, dashboard on 127.0.0.1.

    Stopping it sends SIGTERM to the ``ray start`` process (as Kubernetes does to a head pod's
    container), waits for the whole session to exit, and reports what was left.
    """

    num_cpus: int = 8
    resources: dict[str, float] = field(default_factory=dict)
    object_store_bytes: int = 512 * 1024 * 1024
    env: dict[str, str] = field(default_factory=dict)
    #: Ray token auth as KubeRay configures a pod for ``authOptions.mode: token``:
    #: RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (from the Secret) in the Ray container's env.
    auth_token: str | None = None

    gcs_port: int = 0
    dashboard_port: int = 0
    http_port: int = 0
    #: Ray's metrics export port (KubeRay sets --metrics-export-port=8080 in pods; here a free
    #: port): Ray's metrics agent serves Ray, Serve and vLLM series there for Prometheus.
    metrics_port: int = 0
    temp_dir: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    stopped: bool = False
    leftovers: list[ProcInfo] = field(default_factory=list)

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def serve_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def bin_dir(self) -> Path:
        return Path(sys.executable).parent

    def process_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(OFFLINE_ENV)
        env.update(self.env)
        # The suite's own venv must come first: ray start spawns `python` from PATH for workers.
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env.pop("RAY_ADDRESS", None)
        if self.auth_token is not None:
            env["RAY_AUTH_MODE"] = "token"
            env["RAY_AUTH_TOKEN"] = self.auth_token
        else:
            # Explicit: with RAY_AUTH_MODE unset, Ray 2.60 turns token auth on whenever
            # ~/.ray/auth_token exists (authentication_token_setup.
            # maybe_enable_token_auth_if_token_available), and any local ray.init() writes it.
            env["RAY_AUTH_MODE"] = "disabled"
        return env

    def start(self, timeout: float = 180.0) -> None:
        # Short path: Ray puts unix sockets under it (108-byte limit).
        self.temp_dir = Path(tempfile.mkdtemp(prefix="k2t-ray-", dir="/tmp"))
        self.log_path = self.temp_dir.with_suffix(".log")
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.http_port = free_port()
        _DASHBOARD_HEADERS.clear()
        if self.auth_token is not None:
            _DASHBOARD_HEADERS["x-ray-authorization"] = f"Bearer {self.auth_token}"
        self.metrics_port = free_port()
        cmd = [
            str(self.bin_dir / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={self.gcs_port}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            f"--metrics-export-port={self.metrics_port}",
            f"--num-cpus={self.num_cpus}",
            "--num-gpus=0",
            f"--object-store-memory={self.object_store_bytes}",
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
        ]
        if self.resources:
            cmd.append(f"--resources={json.dumps(self.resources)}")
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.process_env(),
            start_new_session=True,
            cwd=str(self.temp_dir),
        )
        log.close()

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"ray start exited {self.proc.returncode}: {self.log_tail()}")
            response = httpx.get(
                self.dashboard_url + SERVE_API, headers=dashboard_headers(), timeout=5
            )
            return bool(response.status_code == 200)

        poll(ready, timeout=timeout, interval=1.0, what="the Ray dashboard's Serve API")

    @property
    def gcs_address(self) -> str:
        assert self.temp_dir is not None
        current = self.temp_dir / "ray_current_cluster"
        if current.exists():
            return current.read_text().strip()
        return f"127.0.0.1:{self.gcs_port}"

    def start_serve_on_loopback(self, timeout: float = 120.0) -> None:
        """Start Serve's controller and proxy with HTTP on 127.0.0.1:<http_port>.

        The rendered config may carry ``http_options`` for a cluster (0.0.0.0:8000); Serve keeps
        the options it was started with and only logs a warning when a PUT disagrees, so the config
        can be PUT unchanged while the suite stays on loopback.
        """
        cmd = [
            str(self.bin_dir / "serve"),
            "start",
            f"--address={self.gcs_address}",
            "--http-host=127.0.0.1",
            f"--http-port={self.http_port}",
        ]
        done = subprocess.run(
            cmd,
            env=self.process_env(),
            capture_output=True,
            timeout=timeout,
            check=False,
            cwd=str(self.temp_dir),
        )
        if done.returncode != 0:
            raise AssertionError(
                f"serve start failed ({done.returncode}): {done.stderr.decode()[-3000:]}"
            )

        def proxy_up() -> bool:
            data = get_serve_status(self.dashboard_url)
            http = data.get("http_options") or {}
            healthy = [p for p in (data.get("proxies") or {}).values() if p["status"] == "HEALTHY"]
            return bool(healthy) and http.get("host") == "127.0.0.1"

        poll(proxy_up, timeout=timeout, what="Serve's HTTP proxy on loopback")

    def log_tail(self, chars: int = 4000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def session_processes(self) -> list[ProcInfo]:
        if self.proc is None:
            return []
        return processes_of(self.proc.pid, [str(self.temp_dir)] if self.temp_dir else [])

    def stop(self, grace: float = 90.0) -> list[ProcInfo]:
        """SIGTERM the head, wait for every process of its session; return (and kill) leftovers.

        Idempotent: a second call returns the first call's leftovers.
        """
        if self.stopped or self.proc is None:
            return self.leftovers
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        proc = self.proc

        def gone() -> bool:
            return proc.poll() is not None and not self.session_processes()

        with contextlib.suppress(WaitTimeoutError):
            wait_for("the Ray session to exit", gone, timeout=grace, interval=1.0, max_interval=1.0)
        remaining = self.session_processes()
        self.leftovers = remaining
        for info in remaining:  # only processes of the session we started
            with contextlib.suppress(ProcessLookupError):
                os.kill(info.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        return self.leftovers

    def cleanup_files(self) -> None:
        if self.temp_dir and self.temp_dir.exists():
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        if self.log_path and self.log_path.exists():
            self.log_path.unlink()


@dataclass
class ServedApp:
    head: RayHead
    app: str
    served_name: str
    model_dir: Path
    serve_config_v2: str
    running_status: dict[str, Any]
    #: The key the endpoint accepts (the operator renders the API-key ingress for the suite).
    api_key: str = ""

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    @property
    def base_url(self) -> str:
        return self.head.serve_url

    @property
    def openai_base_url(self) -> str:
        return self.head.serve_url + "/v1"


# --------------------------------------------------------------------------------------------
# Serve REST API, as KubeRay uses it


def get_serve_status(dashboard_url: str) -> dict[str, Any]:
    response = httpx.get(dashboard_url + SERVE_API, headers=dashboard_headers(), timeout=30)
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


def put_serve_config_v2(dashboard_url: str, serve_config_v2: str) -> httpx.Response:
    """PUT a ``serveConfigV2`` string the way KubeRay does: YAML -> JSON body, unchanged."""
    body = yaml.safe_load(serve_config_v2)
    return httpx.put(
        dashboard_url + SERVE_API,
        content=json.dumps(body),
        headers={"Content-Type": "application/json", **dashboard_headers()},
        timeout=60,
    )


def delete_serve_applications(dashboard_url: str) -> httpx.Response:
    return httpx.delete(dashboard_url + SERVE_API, headers=dashboard_headers(), timeout=120)


def app_status(data: dict[str, Any], app: str) -> str | None:
    entry = (data.get("applications") or {}).get(app)
    return None if entry is None else str(entry["status"])


def deployment(data: dict[str, Any], app: str, prefix: str) -> dict[str, Any]:
    """The deployment of ``app`` whose name starts with ``prefix`` (e.g. "LLMServer")."""
    deployments = data["applications"][app]["deployments"]
    for name, value in deployments.items():
        if name.startswith(prefix):
            return dict(value)
    raise KeyError(f"no deployment {prefix}* in {sorted(deployments)}")


def replica_states(data: dict[str, Any], app: str, prefix: str = "LLMServer") -> list[str]:
    return [r["state"] for r in deployment(data, app, prefix).get("replicas", [])]


def wait_for_app(
    dashboard_url: str,
    app: str,
    want: str,
    *,
    timeout: float,
    fail_on: Iterable[str] = (),
    on_sample: Callable[[dict[str, Any]], None] | None = None,
    interval: float = 2.0,
) -> dict[str, Any]:
    """Poll ``GET /api/serve/applications/`` until ``app`` has status ``want``; return that JSON."""
    fail_on = set(fail_on)
    seen: dict[str, Any] = {}

    def probe() -> dict[str, Any] | None:
        data = get_serve_status(dashboard_url)
        seen["last"] = data
        if on_sample is not None:
            on_sample(data)
        status = app_status(data, app)
        if status in fail_on:
            raise AssertionError(f"application {app} went {status}: {describe(data, app)}")
        return data if status == want else None

    try:
        result: dict[str, Any] = poll(
            probe, timeout=timeout, interval=interval, what=f"{app} {want}"
        )
    except PollTimeout as exc:
        last = seen.get("last")
        raise PollTimeout(f"{exc}\n{describe(last, app) if last else ''}") from None
    return result


def describe(data: dict[str, Any], app: str) -> str:
    entry = (data.get("applications") or {}).get(app)
    if entry is None:
        return f"no application {app!r}; applications: {sorted(data.get('applications') or {})}"
    parts = [f"app {app}: {entry['status']} {entry.get('message', '')[:2000]}"]
    for name, dep in (entry.get("deployments") or {}).items():
        states = [r["state"] for r in dep.get("replicas", [])]
        parts.append(f"  {name}: {dep['status']} {states} {dep.get('message', '')[-2000:]}")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# Status samples for the operator's status logic (tests/fixtures/serve_status)


def capture_status(name: str, data: dict[str, Any], also_into: Path | None = None) -> None:
    """Keep a real ``GET /api/serve/applications/`` payload.

    Always written next to the test's temporary files (``also_into``); written into
    tests/fixtures/serve_status/<name>.json when K2T_CAPTURE_SERVE_STATUS=1, which is how the
    committed samples were produced.
    """
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    if also_into is not None:
        also_into.mkdir(parents=True, exist_ok=True)
        (also_into / f"{name}.json").write_text(text)
    if os.environ.get("K2T_CAPTURE_SERVE_STATUS") == "1":
        STATUS_FIXTURES.mkdir(parents=True, exist_ok=True)
        (STATUS_FIXTURES / f"{name}.json").write_text(text)


# ---------------------------------------------------------------------------------------------
# The operator's view of a live Serve answer (issue item 4)


def operator_status(serve: dict[str, Any]) -> dict[str, Any]:
    """What the operator would write to ``status`` if KubeRay reported this Serve answer."""
    from k2think_operator.deployment.status import Observation, build_status, read_rayservice
    from tests.kuberay_view import rayservice_from_serve

    view = read_rayservice(rayservice_from_serve(serve))
    observation = Observation(generation=1, rayservice=view, name="tiny", namespace="default")
    return build_status(observation, None, "2026-11-28T00:00:00Z")


def operator_condition(serve: dict[str, Any], kind: str) -> dict[str, Any]:
    status = operator_status(serve)
    return next(c for c in status["conditions"] if c["type"] == kind)
