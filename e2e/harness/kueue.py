"""Kueue v0.17 on the local control plane, run out of cluster like KubeRay's operator.

Kueue is built into the binary cache by ``build-binaries.sh`` (``go install
sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION``) together with its CRDs
(``config/components/crd/bases``) and webhook configurations
(``config/components/webhook/manifests.yaml``). Out of cluster:

- its webhook server listens on 127.0.0.1 with a serving certificate from the harness CA
  (``internalCertManagement`` off, ``webhook.certDir``); the webhook configurations are rewritten
  from ``service`` to ``url: https://127.0.0.1:<port>/<path>`` with the CA as ``caBundle``;
- only the webhooks of Kueue's own API and of RayServices are installed: the others (pods, jobs,
  deployments ...) have ``failurePolicy: Fail`` and would make every pod creation of the cluster
  depend on this process;
- ``ray.io/rayservice`` is the one integration (``integrations.frameworks``), with the alpha gate
  ``ElasticJobsViaWorkloadSlices`` so autoscaled RayServices are admitted as elastic workloads;
  ``waitForPodsReady`` is left out (off): KWOK pods are Running at once, and RayServices never
  become Ready without a real Ray, so Kueue must not evict on readiness;
- Kueue v0.17 reads its metrics-server certificate from the fixed path
  ``/etc/kueue/metrics/certs`` when internal cert management is off (``cmd/kueue/main.go``,
  ``metricsCertPath``) and exits when it is missing, so the harness writes a self-signed one
  there once (only the metrics endpoint uses it; nobody scrapes it here).

Why here and not a chart: there is no container runtime on the test machines.
"""

from __future__ import annotations

import copy
import os
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from . import processes
from .binaries import BUILD_SCRIPT
from .kubeapi import ApiError, wait_for
from .pki import Pki, issue_serving_cert

if TYPE_CHECKING:
    from .cluster import Cluster

KUEUE_NAMESPACE = "kueue-system"
PROCESS = "kueue"
FRAMEWORKS = ("ray.io/rayservice",)
#: VisibilityOnDemand (beta, on by default) serves an aggregated API with a certificate it reads
#: from the fixed path /visibility (pkg/visibility/server.go, certDir) and exits without it;
#: nothing here uses that API.
FEATURE_GATES: dict[str, bool] = {"ElasticJobsViaWorkloadSlices": True, "VisibilityOnDemand": False}
#: API groups whose webhooks we install (rules matching only these groups are kept).
WEBHOOK_GROUPS = frozenset({"kueue.x-k8s.io"})
WEBHOOK_RAY_RESOURCES = frozenset({"rayservices"})
WEBHOOK_NAMES = {
    "MutatingWebhookConfiguration": "k2t-kueue-mutating",
    "ValidatingWebhookConfiguration": "k2t-kueue-validating",
}
METRICS_CERT_DIR = Path("/etc/kueue/metrics/certs")
FIELD_MANAGER = "k2think-e2e-harness"


class KueueError(RuntimeError):
    pass


def kueue_dir(*, build: bool = True) -> Path:
    """Kueue's directory in the cache (binary, ``crds/``, ``webhook/``); builds it if asked.

    ``$K2T_KUEUE_DIR`` wins if set.
    """
    env = os.environ.get("K2T_KUEUE_DIR")
    if env:
        return check_kueue_dir(Path(env).resolve())
    if build:
        subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.DEVNULL)
    out = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--print-kueue"], check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    return check_kueue_dir(Path(out.strip().splitlines()[-1]))


def check_kueue_dir(directory: Path) -> Path:
    if not os.access(directory / "kueue", os.X_OK):
        raise KueueError(f"{directory} has no kueue binary; run `make binaries`")
    if not (directory / "webhook" / "manifests.yaml").is_file():
        raise KueueError(f"{directory} has no webhook/manifests.yaml; run `make binaries`")
    return directory


def crd_files(directory: Path) -> list[Path]:
    return sorted((directory / "crds").glob("*.yaml"))


# --------------------------------------------------------------------------- pure builders
def configuration(
    *,
    webhook_port: int,
    cert_dir: Path,
    health_port: int,
    metrics_port: int,
    frameworks: Sequence[str] = FRAMEWORKS,
    feature_gates: Mapping[str, bool] | None = None,
) -> dict[str, Any]:
    """Kueue's ``Configuration`` (config.kueue.x-k8s.io/v1beta2) for an out-of-cluster run."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": KUEUE_NAMESPACE,
        "manageJobsWithoutQueueName": False,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": f"127.0.0.1:{metrics_port}"},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "clientConnection": {"qps": 100, "burst": 200},
        "integrations": {"frameworks": list(frameworks)},
        "featureGates": dict(FEATURE_GATES if feature_gates is None else feature_gates),
    }


def _wanted(webhook: Mapping[str, Any]) -> bool:
    for rule in webhook.get("rules") or []:
        groups = set(rule.get("apiGroups") or [])
        resources = set(rule.get("resources") or [])
        if groups <= WEBHOOK_GROUPS:
            continue
        if groups == {"ray.io"} and resources <= WEBHOOK_RAY_RESOURCES:
            continue
        return False
    return True


def webhook_configurations(
    manifests: Iterable[Mapping[str, Any]], *, port: int, ca_bundle: str
) -> list[dict[str, Any]]:
    """Kueue's webhook configurations pointed at ``https://127.0.0.1:<port>``, filtered.

    ``ca_bundle`` is the base64 of the CA that signed the webhook server's certificate.
    """
    out: list[dict[str, Any]] = []
    for doc in manifests:
        kind = doc.get("kind")
        if kind not in WEBHOOK_NAMES:
            continue
        webhooks = []
        for hook in doc.get("webhooks") or []:
            if not _wanted(hook):
                continue
            hook = copy.deepcopy(dict(hook))
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}", "caBundle": ca_bundle}
            webhooks.append(hook)
        out.append(
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": kind,
                "metadata": {"name": WEBHOOK_NAMES[str(kind)]},
                "webhooks": webhooks,
            }
        )
    return out


# --------------------------------------------------------------------------- process
def _ensure_metrics_cert(pki: Pki) -> None:
    """Kueue exits without a certificate at its fixed metrics path (see the module doc)."""
    crt, key = METRICS_CERT_DIR / "tls.crt", METRICS_CERT_DIR / "tls.key"
    if crt.is_file() and key.is_file():
        return
    try:
        METRICS_CERT_DIR.mkdir(parents=True, exist_ok=True)
        tmp_crt, tmp_key = (
            crt.with_suffix(f".{os.getpid()}.crt"),
            key.with_suffix(f".{os.getpid()}.key"),
        )
        issue_serving_cert(pki, tmp_crt, tmp_key, name="kueue-metrics", ips=["127.0.0.1"])
        tmp_key.chmod(0o644)  # a throw-away self-signed key for an unused endpoint
        os.replace(tmp_crt, crt)
        os.replace(tmp_key, key)
    except OSError as exc:
        raise KueueError(
            f"Kueue needs a certificate in {METRICS_CERT_DIR} (fixed path in Kueue v0.17 when "
            f"internal cert management is off) and it cannot be written: {exc}"
        ) from exc


def _b64(path: Path) -> str:
    import base64

    return base64.b64encode(path.read_bytes()).decode()


def start_kueue(cluster: Cluster, *, timeout: float = 120.0) -> None:
    """Install Kueue's CRDs, run Kueue against ``cluster`` and register its webhooks."""
    if kueue_running(cluster):
        return
    sd = cluster.state_dir
    api = cluster.api
    if sd is None or api is None:
        raise KueueError("Kueue runs only on a harness cluster (one with a state dir)")
    t0 = time.monotonic()
    kd = kueue_dir()
    cluster.install_crds(crd_files(kd), kuberay=False, timeout=timeout)
    try:
        api.create(
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": KUEUE_NAMESPACE}},
        )
    except ApiError as exc:
        if exc.status != 409:
            raise
    pki = cluster.pki
    _ensure_metrics_cert(pki)
    work = sd / "kueue"
    cert_dir = work / "certs"
    issue_serving_cert(
        pki, cert_dir / "tls.crt", cert_dir / "tls.key", name="kueue-webhook", ips=["127.0.0.1"]
    )
    webhook, health, metrics, visibility = processes.free_ports(4)
    cluster.ports.update(
        {
            "kueue-webhook": webhook,
            "kueue-health": health,
            "kueue-metrics": metrics,
            "kueue-visibility": visibility,
        }
    )
    config = configuration(
        webhook_port=webhook, cert_dir=cert_dir, health_port=health, metrics_port=metrics
    )
    config_path = work / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=True))
    argv = [
        str(kd / "kueue"),
        f"--config={config_path}",
        f"--visibility-server-port={visibility}",
        "--zap-log-level=2",
    ]
    cluster._start(PROCESS, argv, env={"KUBECONFIG": str(cluster.kubeconfig)})

    def ready() -> bool:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health}/readyz", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    cluster._wait("kueue /readyz", ready, timeout, PROCESS)
    manifests = list(yaml.safe_load_all((kd / "webhook" / "manifests.yaml").read_text()))
    for doc in webhook_configurations(manifests, port=webhook, ca_bundle=_b64(pki.ca_cert)):
        plural = "mutatingwebhookconfigurations"
        if doc["kind"] == "ValidatingWebhookConfiguration":
            plural = "validatingwebhookconfigurations"
        api.apply(
            f"/apis/admissionregistration.k8s.io/v1/{plural}/{doc['metadata']['name']}",
            doc,
            manager=FIELD_MANAGER,
        )

    probe_flavor = {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "ResourceFlavor",
        "metadata": {"name": "k2t-harness-probe"},
    }

    def webhook_answers() -> bool:
        # A dry-run create goes through the mutating and validating webhooks: proof that the
        # API server reaches Kueue over TLS with our CA.
        try:
            api.request(
                "POST",
                "/apis/kueue.x-k8s.io/v1beta2/resourceflavors",
                probe_flavor,
                query={"dryRun": "All"},
            )
        except ApiError:
            return False
        return True

    cluster._wait("Kueue's webhooks to answer the API server", webhook_answers, timeout, PROCESS)
    cluster._save()
    print(f"harness: Kueue ready ({time.monotonic() - t0:.1f}s)", flush=True)


def kueue_running(cluster: Cluster) -> bool:
    p = cluster.procs.get(PROCESS)
    return p is not None and p.alive()


def stop_kueue(cluster: Cluster, timeout: float = 15.0) -> None:
    """Remove the webhook configurations first (they would block RayService writes), then stop."""
    api = cluster.api
    if api is not None:
        for kind, name in WEBHOOK_NAMES.items():
            plural = kind.lower() + "s"
            try:
                api.delete(f"/apis/admissionregistration.k8s.io/v1/{plural}/{name}")
            except ApiError as exc:
                if exc.status != 404:
                    raise
    p = cluster.procs.pop(PROCESS, None)
    if p is not None:
        p.stop(timeout)


__all__ = [
    "FEATURE_GATES",
    "FRAMEWORKS",
    "KUEUE_NAMESPACE",
    "KueueError",
    "configuration",
    "kueue_dir",
    "kueue_running",
    "start_kueue",
    "stop_kueue",
    "wait_for",
    "webhook_configurations",
]
