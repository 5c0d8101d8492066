"""The local control plane: etcd, kube-apiserver, controller-manager, scheduler, KWOK (and the
KubeRay operator when asked), all on 127.0.0.1, plus GPU node pools from a campus file.

Typical use from pytest::

    cluster = Cluster.from_env(campus=SMALL_CAMPUS, name="pytest")  # or Cluster.start(...)
    try:
        cluster.kubectl("get", "nodes")
        cluster.start_kuberay()
    finally:
        cluster.close()  # stops what this process started; leaves attached clusters alone

``python -m harness up`` does the same from a shell and leaves the processes running.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import commands, processes
from .binaries import E2E_DIR, find_bindir, kuberay_crds, kwok_stages, our_crds
from .campus import KWOK_LABEL, Campus, load_campus
from .kubeapi import ApiError, KubeAPI, parallel, wait_for
from .pki import Pki, make_pki

_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

DEFAULT_CAMPUS = E2E_DIR / "campus" / "small.yaml"
STATE_ROOT = E2E_DIR / ".state"
CONTEXT = "k2think-e2e"
FIELD_MANAGER = "k2think-e2e"
# Fake pod IPs handed out by KWOK (commands.POD_CIDR) are loopback on purpose: if anything ever
# dials a pod IP (e.g. the KubeRay operator probing a head pod), it stays on this machine.
SERVICE_CIDR, SERVICE_IP = commands.SERVICE_CIDR, commands.SERVICE_IP
POD_CIDR, NODE_IP = commands.POD_CIDR, commands.NODE_IP

#: Context names that look like disposable test clusters (checked before touching a cluster that
#: the harness did not start). Anything else needs K2T_E2E_ALLOW_CONTEXT=<context name>.
TEST_CONTEXT_PATTERNS = (
    r"k2think-e2e.*",
    r"kind-.*",
    r"k3d-.*",
    r"kwok-.*",
    r"minikube",
    r"envtest.*",
)
#: Order in which processes are stopped.
STOP_ORDER = (
    "kueue",
    "ray-operator",
    "kwok",
    "kube-scheduler",
    "kube-controller-manager",
    "kube-apiserver",
    "etcd",
)


def _log(msg: str) -> None:
    print(f"harness: {msg}", file=sys.stderr, flush=True)


class HarnessError(RuntimeError):
    pass


class UnsafeContextError(HarnessError):
    pass


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, server: str, pki: Pki, client: str, context: str) -> Path:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": context,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": _b64(pki.ca_cert),
                },
            }
        ],
        "users": [
            {
                "name": f"{context}-{client}",
                "user": {
                    "client-certificate-data": _b64(pki.client_cert(client)),
                    "client-key-data": _b64(pki.client_key(client)),
                },
            }
        ],
        "contexts": [
            {"name": context, "context": {"cluster": context, "user": f"{context}-{client}"}}
        ],
        "current-context": context,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    path.chmod(0o600)
    return path


def _yaml_names(paths: Iterable[Path], kind: str) -> list[str]:
    names = []
    for p in paths:
        with p.open() as f:
            for doc in yaml.load_all(f, Loader=_YAML_LOADER):
                if isinstance(doc, dict) and doc.get("kind") == kind:
                    names.append(str(doc["metadata"]["name"]))
    return names


def _http_status(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _tcp_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def check_context(kubeconfig: str, context: str | None, kubectl: Path | str) -> str:
    """Return the context that ``kubeconfig`` (a KUBECONFIG value) would use; refuse unsafe ones.

    A context is accepted when its name looks like a disposable test cluster
    (:data:`TEST_CONTEXT_PATTERNS`) or equals ``$K2T_E2E_ALLOW_CONTEXT``.
    """
    env = {**os.environ, "KUBECONFIG": kubeconfig}
    if context is None:
        proc = subprocess.run(
            [str(kubectl), "config", "current-context"],
            env=env,
            capture_output=True,
            text=True,
        )
        context = proc.stdout.strip()
        if proc.returncode != 0 or not context:
            raise UnsafeContextError(f"KUBECONFIG={kubeconfig} has no current context")
    allowed = os.environ.get("K2T_E2E_ALLOW_CONTEXT", "")
    if context == allowed or any(re.fullmatch(p, context) for p in TEST_CONTEXT_PATTERNS):
        return context
    raise UnsafeContextError(
        f"refusing to run e2e tests against context {context!r}: it does not look like a test "
        f"cluster. Set K2T_E2E_ALLOW_CONTEXT={context} if you really mean it."
    )


@dataclass
class Cluster:
    """A Kubernetes cluster the e2e suite runs against.

    ``local`` clusters were started by this harness (``state_dir`` holds their certificates,
    logs and pid records); ``owned`` ones were started by this very Python process and are
    stopped by :meth:`close`. A cluster reached through someone else's KUBECONFIG is neither.
    """

    kubeconfig: Path
    bindir: Path
    state_dir: Path | None = None
    context: str | None = None
    owned: bool = False
    detached: bool = False
    campus: Campus | None = None
    ports: dict[str, int] = field(default_factory=dict)
    api: KubeAPI | None = None
    procs: dict[str, processes.Proc] = field(default_factory=dict)
    #: KWOK's pod IP range and the apiserver's bind address. The chain suite (its own network
    #: namespace, harness/netns.py) uses a routable pod range and binds every address there.
    pod_cidr: str = POD_CIDR
    apiserver_bind: str = NODE_IP
    #: KubeSchedulerConfiguration profile for the scheduler (harness/scheduling.py); None: defaults
    scheduler_profile: Path | None = None
    #: Per node name, what its manifest carries besides the campus's (``spec``/``status`` keys):
    #: the chain ground gives each node its pod range and address (netns.node_manifest_network).
    node_overlays: dict[str, dict[str, Any]] = field(default_factory=dict)
    _t0: float = field(default=0.0, repr=False)

    # ----------------------------------------------------------------- construction
    @classmethod
    def start(
        cls,
        *,
        campus: str | Path | Campus | None = DEFAULT_CAMPUS,
        kuberay: bool = False,
        name: str = "default",
        state_dir: str | Path | None = None,
        crds: Sequence[str | Path] | None = None,
        bindir: str | Path | None = None,
        detach: bool = False,
        timeout: float = 180.0,
        pod_cidr: str = POD_CIDR,
        apiserver_bind: str = NODE_IP,
        kueue: bool = False,
        scheduler_profile: str | Path | None = None,
        node_overlays: dict[str, dict[str, Any]] | None = None,
    ) -> Cluster:
        """Start a fresh control plane and return it once it is usable.

        ``crds``: CRD files to install (default: this repo's ``crds/*.yaml``); KubeRay's CRDs
        are always installed. ``detach``: processes survive this Python process (the CLI's
        ``up``); otherwise they die with it and :meth:`close` / atexit stops them.
        ``kueue``: also run Kueue (harness/kueue.py); ``scheduler_profile``: run the scheduler
        with that KubeSchedulerConfiguration (e.g. ``scheduling.GPU_BINPACKING_PROFILE``);
        ``node_overlays``: extra ``spec``/``status`` fields per node name (:attr:`node_overlays`).
        """
        t0 = time.monotonic()
        sd = Path(state_dir) if state_dir else STATE_ROOT / name
        sd = sd.resolve()
        live = [p for p in processes.recorded(sd) if p.alive()]
        if live:
            raise HarnessError(
                f"a cluster is already running in {sd} ({', '.join(p.name for p in live)}); "
                f"stop it with `python -m harness down --state-dir {sd}`"
            )
        if sd.exists():
            shutil.rmtree(sd)
        sd.mkdir(parents=True)
        bd = Path(bindir).resolve() if bindir else find_bindir()
        camp = load_campus(campus) if isinstance(campus, (str, Path)) else campus
        cluster = cls(
            kubeconfig=sd / "kubeconfig",
            bindir=bd,
            state_dir=sd,
            context=CONTEXT,
            owned=True,
            detached=detach,
            campus=camp,
            pod_cidr=pod_cidr,
            apiserver_bind=apiserver_bind,
            scheduler_profile=Path(scheduler_profile).resolve() if scheduler_profile else None,
            node_overlays=dict(node_overlays or {}),
        )
        if not detach:
            atexit.register(cluster.close)
        crd_files = list(our_crds()) if crds is None else [Path(c) for c in crds]
        try:
            cluster._boot(timeout)
            # KubeRay's CRDs cost the apiserver 10-30 s of CPU: overlap that with the
            # controller-manager's start and the node creation.
            with ThreadPoolExecutor(max_workers=1) as pool:
                crds_done = pool.submit(cluster.install_crds, crd_files, timeout=timeout)
                try:
                    cluster._wait_controllers(timeout)
                    if camp is not None:
                        cluster.create_nodes(camp, timeout=timeout)
                finally:
                    crds_done.result()
            if kuberay:
                cluster.start_kuberay()
            if kueue:
                from .kueue import start_kueue

                start_kueue(cluster, timeout=timeout)
        except BaseException:
            _log(f"start failed; logs are in {sd / 'logs'}")
            cluster.stop(remove_state=False)
            raise
        cluster._save()
        _log(f"cluster up in {time.monotonic() - t0:.1f}s; export KUBECONFIG={cluster.kubeconfig}")
        return cluster

    @classmethod
    def attach(cls, state_dir: str | Path) -> Cluster:
        """A harness cluster started by another process (e.g. ``make cluster-up``)."""
        sd = Path(state_dir).resolve()
        meta = json.loads((sd / "cluster.json").read_text())
        cluster = cls(
            kubeconfig=sd / "kubeconfig",
            bindir=Path(meta["bindir"]),
            state_dir=sd,
            context=CONTEXT,
            owned=False,
            ports={k: int(v) for k, v in meta["ports"].items()},
        )
        if meta.get("campus"):
            from .campus import parse_campus

            cluster.campus = parse_campus(meta["campus"], source=meta.get("campus_name", "campus"))
        cluster.procs = {p.name: p for p in processes.recorded(sd)}
        try:
            cluster.api = cluster._make_api()
            cluster.api.request("GET", "/readyz", raw=True)
        except (OSError, ApiError) as exc:
            raise HarnessError(
                f"the harness cluster in {sd} is not answering ({exc}); start it with "
                f"`make cluster-up` or unset KUBECONFIG to let the tests start their own"
            ) from exc
        return cluster

    @classmethod
    def connect(
        cls,
        kubeconfig: str | Path | None = None,
        *,
        context: str | None = None,
        bindir: str | Path | None = None,
    ) -> Cluster:
        """An existing cluster through a kubeconfig (default ``$KUBECONFIG``); starts nothing.

        If the kubeconfig belongs to a harness state dir the cluster is attached instead (so the
        KubeRay operator can be started and stopped). Otherwise the context must look like a test
        cluster or be named by ``$K2T_E2E_ALLOW_CONTEXT``.
        """
        kc = str(kubeconfig) if kubeconfig is not None else os.environ.get("KUBECONFIG", "")
        if not kc:
            raise HarnessError("no kubeconfig given and KUBECONFIG is not set")
        single = Path(kc) if os.pathsep not in kc else None
        if (
            single is not None
            and (single.parent / "cluster.json").is_file()
            and context
            in (
                None,
                CONTEXT,
            )
        ):
            return cls.attach(single.parent)
        bd = Path(bindir).resolve() if bindir else find_bindir()
        ctx = check_context(kc, context, bd / "kubectl")
        first = Path(kc.split(os.pathsep)[0])
        return cls(kubeconfig=first if single else Path(kc), bindir=bd, context=ctx)

    @classmethod
    def from_env(cls, **start_kwargs: Any) -> Cluster:
        """``connect()`` when ``$KUBECONFIG`` is set (and ``$K2T_E2E_FRESH`` is not), else
        ``start(**start_kwargs)``."""
        if os.environ.get("KUBECONFIG") and not os.environ.get("K2T_E2E_FRESH"):
            return cls.connect()
        return cls.start(**start_kwargs)

    # ----------------------------------------------------------------- properties
    @property
    def local(self) -> bool:
        return self.state_dir is not None

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    @property
    def pki(self) -> Pki:
        assert self.state_dir is not None
        return Pki(self.state_dir / "pki")

    def env(self) -> dict[str, str]:
        """Environment for a child process that should talk to this cluster."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    # ----------------------------------------------------------------- kubectl
    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this cluster; stdout/stderr captured as text."""
        argv = [str(self.bindir / "kubectl")]
        if self.context:
            argv.append(f"--context={self.context}")
        argv += list(args)
        proc = subprocess.run(
            argv,
            input=input,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise HarnessError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}"
            )
        return proc

    def kubectl_json(self, *args: str, timeout: float = 120.0) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json", timeout=timeout).stdout)

    def service_account_kubeconfig(
        self,
        namespace: str,
        name: str,
        *,
        path: str | Path | None = None,
        duration: str = "2h",
    ) -> Path:
        """A kubeconfig that authenticates as ServiceAccount ``namespace/name`` with a token from
        the TokenRequest API (``kubectl create token``); same server and CA as this cluster."""
        token = self.kubectl(
            "-n", namespace, "create", "token", name, f"--duration={duration}"
        ).stdout.strip()
        raw = self.kubectl_json("config", "view", "--raw", "--minify")
        server_cfg = dict(raw["clusters"][0]["cluster"])
        ctx = f"{namespace}-{name}"
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": ctx, "cluster": server_cfg}],
            "users": [{"name": ctx, "user": {"token": token}}],
            "contexts": [
                {"name": ctx, "context": {"cluster": ctx, "user": ctx, "namespace": namespace}}
            ],
            "current-context": ctx,
        }
        if path is None:
            base = self.state_dir or Path(os.environ.get("TMPDIR", "/tmp"))
            path = base / "kubeconfigs" / f"sa-{namespace}-{name}"
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(yaml.safe_dump(cfg, sort_keys=False))
        out.chmod(0o600)
        return out

    # ----------------------------------------------------------------- boot
    def _make_api(self) -> KubeAPI:
        pki = self.pki
        return KubeAPI(
            "127.0.0.1",
            self.ports["apiserver"],
            pki.ca_cert,
            pki.client_cert("admin"),
            pki.client_key("admin"),
        )

    def _start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        assert self.state_dir is not None
        self.procs[name] = processes.start(
            name, argv, self.state_dir, env=env, detach=self.detached
        )

    def _wait(self, what: str, probe: Any, timeout: float, *names: str) -> Any:
        """wait_for() that fails fast (with the log tail) if one of ``names`` has exited."""

        def checked() -> Any:
            for n in names:
                p = self.procs[n]
                if not p.alive():
                    raise HarnessError(
                        f"{n} exited ({p.returncode()}) while waiting for {what}; "
                        f"last lines of {p.log}:\n{p.log_tail()}"
                    )
            return probe()

        try:
            return wait_for(what, checked, timeout=timeout)
        except HarnessError:
            raise
        except TimeoutError as exc:
            # the last probe error may hide a dead process: report that instead
            for n in names:
                if not self.procs[n].alive():
                    checked()
            raise HarnessError(str(exc)) from exc

    def _boot(self, timeout: float) -> None:
        assert self.state_dir is not None
        sd, bd = self.state_dir, self.bindir
        t0 = time.monotonic()
        pki = make_pki(sd / "pki", service_ip=SERVICE_IP)
        names = ("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler")
        self.ports = dict(zip(names, processes.free_ports(len(names)), strict=True))
        p = self.ports

        etcd_url = commands.loopback_url(p["etcd"])
        self._start("etcd", commands.build_etcd_argv(bd, sd, p["etcd"], p["etcd-peer"]))
        self._wait("etcd /health", lambda: _http_status(f"{etcd_url}/health") == 200, 30, "etcd")
        _log(f"etcd ready ({time.monotonic() - t0:.1f}s)")

        (sd / "apiserver").mkdir(exist_ok=True)
        self._start(
            "kube-apiserver",
            commands.build_apiserver_argv(
                bd,
                sd,
                pki,
                etcd_url=etcd_url,
                port=p["apiserver"],
                bind_address=self.apiserver_bind,
            ),
        )
        self.api = self._make_api()
        api = self.api
        self._wait(
            "kube-apiserver /readyz",
            lambda: api.request("GET", "/readyz", raw=True).strip() == "ok",
            timeout,
            "kube-apiserver",
            "etcd",
        )
        _log(f"kube-apiserver ready ({time.monotonic() - t0:.1f}s)")

        kcs = sd / "kubeconfigs"
        write_kubeconfig(self.kubeconfig, self.server, pki, "admin", CONTEXT)
        kcm_kc = write_kubeconfig(
            kcs / "controller-manager", self.server, pki, "controller-manager", CONTEXT
        )
        sched_kc = write_kubeconfig(kcs / "scheduler", self.server, pki, "scheduler", CONTEXT)

        self._start(
            "kube-controller-manager",
            commands.build_controller_manager_argv(
                bd, sd, pki, kubeconfig=kcm_kc, port=p["controller-manager"]
            ),
        )
        self._start(
            "kube-scheduler",
            commands.build_scheduler_argv(
                bd,
                kubeconfig=sched_kc,
                port=p["scheduler"],
                config=self._scheduler_config(sched_kc),
            ),
        )
        kwok_home = sd / "kwok-home"  # KWOK also reads ~/.kwok/kwok.yaml: keep it out
        kwok_home.mkdir(exist_ok=True)
        kwok_argv = commands.build_kwok_argv(
            bd,
            kubeconfig=self.kubeconfig,
            node_label=KWOK_LABEL,
            stages=kwok_stages(bd),
            pod_cidr=self.pod_cidr,
        )
        self._start("kwok", kwok_argv, env={"HOME": str(kwok_home)})
        self._t0 = t0

    def restart_scheduler(self, profile: str | Path | None, timeout: float = 60.0) -> None:
        """Run kube-scheduler again with another KubeSchedulerConfiguration profile (None: the
        defaults), on the same port and kubeconfig: one campus compares scheduler profiles
        (e2e/bench/campus.py) without building 1,000 nodes twice."""
        assert self.state_dir is not None
        old = self.procs.get("kube-scheduler")
        if old is not None:
            old.stop(20)
        self.scheduler_profile = Path(profile).resolve() if profile else None
        sched_kc = self.state_dir / "kubeconfigs" / "scheduler"
        port = self.ports["scheduler"]
        self._start(
            "kube-scheduler",
            commands.build_scheduler_argv(
                self.bindir, kubeconfig=sched_kc, port=port, config=self._scheduler_config(sched_kc)
            ),
        )
        self._wait("kube-scheduler to serve", lambda: _tcp_open(port), timeout, "kube-scheduler")
        self._save()

    def _scheduler_config(self, kubeconfig: Path) -> Path | None:
        if self.scheduler_profile is None:
            return None
        from .scheduling import write_scheduler_config

        assert self.state_dir is not None
        out = self.state_dir / "kube-scheduler-config.yaml"
        return write_scheduler_config(self.scheduler_profile, kubeconfig, out)

    def _wait_controllers(self, timeout: float) -> None:
        api, p = self._require_api(), self.ports

        def default_sa() -> bool:
            return api.exists("/api/v1/namespaces/default/serviceaccounts/default")

        self._wait(
            "the default ServiceAccount (controller-manager up)",
            default_sa,
            timeout,
            "kube-controller-manager",
            "kube-apiserver",
        )
        self._wait(
            "kube-scheduler to serve",
            lambda: _tcp_open(p["scheduler"]),
            timeout,
            "kube-scheduler",
        )
        _log(f"controller-manager, scheduler, kwok up ({time.monotonic() - self._t0:.1f}s)")

    def _save(self) -> None:
        if self.state_dir is None:
            return
        meta = {
            "context": CONTEXT,
            "kubeconfig": str(self.kubeconfig),
            "bindir": str(self.bindir),
            "ports": self.ports,
            "campus_name": self.campus.name if self.campus else None,
            "campus": _campus_to_raw(self.campus) if self.campus else None,
        }
        (self.state_dir / "cluster.json").write_text(json.dumps(meta, indent=1))

    # ----------------------------------------------------------------- CRDs and nodes
    def install_crds(
        self, paths: Sequence[Path] = (), *, kuberay: bool = True, timeout: float = 90.0
    ) -> list[str]:
        """Server-side apply CRD files (plus KubeRay's) and wait until they are Established."""
        files = [Path(x) for x in paths]
        if kuberay:
            files += kuberay_crds(self.bindir)
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise HarnessError(f"CRD files not found: {missing}")
        if not files:
            return []
        t0 = time.monotonic()
        if self.api is not None:
            names = self._apply_crds_rest(files, timeout)
        else:
            names = self._apply_crds_kubectl(files, timeout)
        _log(f"CRDs established ({time.monotonic() - t0:.1f}s): {', '.join(names)}")
        return names

    def _apply_crds_rest(self, files: Sequence[Path], timeout: float) -> list[str]:
        """SSA through the REST client: a create costs ~0.5 s even for KubeRay's 1 MB CRDs,
        while ``kubectl apply --server-side`` of the four takes ~30 s on 2 busy cores."""
        api = self._require_api()
        base = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        docs: list[tuple[Path, dict[str, Any]]] = []
        for f in files:
            with f.open() as fh:
                docs += [
                    (f, d)
                    for d in yaml.load_all(fh, Loader=_YAML_LOADER)
                    if isinstance(d, dict) and d.get("kind") == "CustomResourceDefinition"
                ]

        def apply(item: tuple[Path, dict[str, Any]]) -> None:
            f, doc = item
            name = doc["metadata"]["name"]
            try:
                api.apply(f"{base}/{name}", doc, manager=FIELD_MANAGER)
            except ApiError as exc:
                raise HarnessError(f"applying CRD {name} from {f}: {exc}") from exc

        parallel(apply, docs, workers=2)
        names = [str(d["metadata"]["name"]) for _, d in docs]

        def established(name: str) -> bool:
            conds = (api.get(f"{base}/{name}").get("status") or {}).get("conditions") or []
            return any(c["type"] == "Established" and c["status"] == "True" for c in conds)

        wait_for("CRDs Established", lambda: all(established(n) for n in names), timeout=timeout)
        return names

    def _apply_crds_kubectl(self, files: Sequence[Path], timeout: float) -> list[str]:
        args = ["apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}"]
        for f in files:
            args += ["-f", str(f)]
        self.kubectl(*args, timeout=timeout)
        names = _yaml_names(files, "CustomResourceDefinition")
        if names:
            self.kubectl(
                "wait",
                "--for=condition=Established",
                f"--timeout={int(timeout)}s",
                *[f"crd/{n}" for n in names],
                timeout=timeout + 10,
            )
        return names

    def create_nodes(
        self, campus: Campus, *, workers: int = 16, timeout: float = 300.0
    ) -> list[str]:
        """Create the campus's Node objects in parallel and wait until KWOK has them Ready."""
        api = self._require_api()
        t0 = time.monotonic()

        def create(node: dict[str, Any]) -> None:
            name = node["metadata"]["name"]
            for part, fields in self.node_overlays.get(name, {}).items():
                node.setdefault(part, {}).update(fields)
            try:
                created = api.create("/api/v1/nodes", node)
            except ApiError as exc:
                if exc.status != 409:
                    raise
                created = api.get(f"/api/v1/nodes/{name}")
            want = node["status"]["capacity"]
            have = (created.get("status") or {}).get("capacity") or {}
            if any(have.get(k) != v for k, v in want.items()):
                api.request(
                    "PATCH",
                    f"/api/v1/nodes/{name}/status",
                    {"status": {"capacity": want, "allocatable": node["status"]["allocatable"]}},
                    content_type="application/merge-patch+json",
                )

        parallel(create, campus.nodes(), workers=workers)
        expected = set(campus.node_names())
        _log(f"{len(expected)} nodes created ({time.monotonic() - t0:.1f}s); waiting for Ready")

        def all_ready() -> bool:
            items = api.get("/api/v1/nodes", labelSelector=f"{KWOK_LABEL[0]}={KWOK_LABEL[1]}")[
                "items"
            ]
            ready = {n["metadata"]["name"] for n in items if _node_schedulable(n)}
            return expected <= ready

        if self.procs.get("kwok") is not None:
            self._wait("KWOK to mark the nodes Ready (and untainted)", all_ready, timeout, "kwok")
        else:
            wait_for("the nodes to be Ready", all_ready, timeout=timeout)
        _log(f"{len(expected)} nodes Ready ({time.monotonic() - t0:.1f}s)")
        return sorted(expected)

    def _require_api(self) -> KubeAPI:
        if self.api is None:
            raise HarnessError("this operation needs a harness-started cluster")
        return self.api

    # ----------------------------------------------------------------- KubeRay operator
    def kuberay_running(self) -> bool:
        p = self.procs.get("ray-operator")
        return p is not None and p.alive()

    def start_kuberay(
        self,
        *,
        watch_namespace: str | None = None,
        extra_args: Sequence[str] = (),
        timeout: float = 90.0,
        netns: Path | None = None,
        kubeconfig: Path | None = None,
    ) -> None:
        """Run KubeRay's ray-operator on this machine against this cluster (KUBECONFIG).

        ``netns``: in that network namespace (the chain ground runs it in the network namespace
        of a pod standing for KubeRay's, so NetworkPolicies see its calls as that pod's), with
        ``kubeconfig`` naming a server reachable from there."""
        if self.kuberay_running():
            return
        if self.state_dir is None:
            raise HarnessError("start_kuberay needs a state dir (a harness cluster)")
        t0 = time.monotonic()
        metrics, probe = processes.free_ports(2)
        self.ports["kuberay-metrics"], self.ports["kuberay-probe"] = metrics, probe
        argv = commands.build_kuberay_argv(
            self.bindir,
            metrics_port=metrics,
            probe_port=probe,
            watch_namespace=watch_namespace,
            extra_args=extra_args,
        )
        assert self.state_dir is not None
        self.procs["ray-operator"] = processes.start(
            "ray-operator",
            argv,
            self.state_dir,
            env={"KUBECONFIG": str(kubeconfig or self.kubeconfig)},
            detach=self.detached,
            netns=netns,
        )

        def ready() -> bool:
            if netns is None:
                return _http_status(f"http://127.0.0.1:{probe}/readyz") == 200
            from .netns import inside

            with inside(netns):
                return _http_status(f"http://127.0.0.1:{probe}/readyz") == 200

        self._wait("ray-operator /readyz", ready, timeout, "ray-operator")
        self._save()
        _log(f"KubeRay operator ready ({time.monotonic() - t0:.1f}s)")

    def stop_kuberay(self, timeout: float = 15.0) -> None:
        p = self.procs.pop("ray-operator", None)
        if p is not None:
            p.stop(timeout)

    # ----------------------------------------------------------------- teardown
    def stop(self, *, remove_state: bool = True) -> None:
        """Stop every recorded process of this cluster (whoever started it)."""
        if self.api is not None:
            self.api.close()
        if self.state_dir is None:
            return
        procs = dict(self.procs)
        for p in processes.recorded(self.state_dir):
            procs.setdefault(p.name, p)
        order = [n for n in STOP_ORDER if n in procs] + [n for n in procs if n not in STOP_ORDER]
        for n in order:
            procs[n].stop()
        self.procs.clear()
        if remove_state and self.state_dir.exists():
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def close(self) -> None:
        """Stop the cluster if this process owns it (keep its state if K2T_E2E_KEEP is set)."""
        if self.owned:
            self.owned = False
            with contextlib.suppress(Exception):
                atexit.unregister(self.close)
            self.stop(remove_state=not os.environ.get("K2T_E2E_KEEP"))

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_NODE_LIFECYCLE_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


def _node_schedulable(node: dict[str, Any]) -> bool:
    """Ready, and the node lifecycle controller has lifted its not-ready taint (it adds one to
    every new node until its next pass sees the Ready condition KWOK wrote)."""
    status = node.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    taints = (node.get("spec") or {}).get("taints") or []
    return ready and not any(t.get("key") in _NODE_LIFECYCLE_TAINTS for t in taints)


def _campus_to_raw(campus: Campus) -> dict[str, Any]:
    pools = []
    for p in campus.pools:
        raw: dict[str, Any] = {
            "name": p.name,
            "count": p.count,
            "gpus": p.gpus,
            "gpuResource": p.gpu_resource,
            "resources": dict(p.resources),
            "labels": dict(p.labels),
            "annotations": dict(p.annotations),
            "taints": [t.to_dict() for t in p.taints],
            "zones": list(p.zones),
        }
        if p.gpu_product:
            raw["gpuProduct"] = p.gpu_product
        if p.gpu_memory_mib is not None:
            raw["gpuMemoryMiB"] = p.gpu_memory_mib
        if p.instance_type:
            raw["instanceType"] = p.instance_type
        pools.append(raw)
    return {"name": campus.name, "nodePrefix": campus.node_prefix, "pools": pools}


def down(state_dir: str | Path, *, remove_state: bool = True) -> list[str]:
    """Stop whatever is recorded in ``state_dir`` (the CLI's ``down``). Returns stopped names."""
    sd = Path(state_dir).resolve()
    procs = {p.name: p for p in processes.recorded(sd)} if sd.exists() else {}
    alive = [n for n, p in procs.items() if p.alive()]
    Cluster(kubeconfig=sd / "kubeconfig", bindir=sd, state_dir=sd, procs=procs).stop(
        remove_state=remove_state
    )
    return alive
