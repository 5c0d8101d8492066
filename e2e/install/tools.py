"""Helpers of the install suite: helm/kubectl runners, ServiceAccount kubeconfigs, a local operator."""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness import Cluster, wait_for
from harness.operator_process import OperatorExited, OperatorProcess

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "k2think-operator"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
MANIFESTS = ROOT / "manifests"
EXAMPLE = ROOT / "crds" / "examples" / "k2think.yaml"
CRD_NAME = "k2thinkdeployments.k2think.dev"
#: helm template's Kubernetes version (the chart's floor): output independent of the helm build.
KUBE_VERSION = "1.30.0"


class CommandError(AssertionError):
    pass


def run(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    check: bool = True,
    input: str | None = None,
    timeout: float = 180.0,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(argv),
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise CommandError(
            f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr.strip()}\n{proc.stdout[-2000:]}"
        )
    return proc


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]


@dataclass
class Tools:
    """helm and kubectl from the harness's bin dir, pointed at one cluster (or none: offline)."""

    bindir: Path
    home: Path
    kubeconfig: Path | None = None
    context: str | None = None

    @classmethod
    def for_cluster(cls, cluster: Cluster, home: Path) -> Tools:
        return cls(cluster.bindir, home, cluster.kubeconfig, cluster.context)

    def env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        env = {
            **os.environ,
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }
        env.pop("KUBECONFIG", None)
        if kubeconfig or self.kubeconfig:
            env["KUBECONFIG"] = str(kubeconfig or self.kubeconfig)
        return env

    def helm(
        self, *args: str, check: bool = True, timeout: float = 240.0
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bindir / "helm")]
        if self.context:
            argv.append(f"--kube-context={self.context}")
        return run([*argv, *args], env=self.env(), check=check, timeout=timeout)

    def template(
        self, *args: str, release: str = "t", namespace: str = "ops"
    ) -> list[dict[str, Any]]:
        out = run(
            [
                str(self.bindir / "helm"),
                "template",
                release,
                str(CHART),
                "--namespace",
                namespace,
                "--kube-version",
                KUBE_VERSION,
                *args,
            ],
            env=self.env(),
        ).stdout
        return docs(out)

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bindir / "kubectl")]
        if kubeconfig is None and self.context:
            argv.append(f"--context={self.context}")
        return run(
            [*argv, *args], env=self.env(kubeconfig), check=check, input=input, timeout=timeout
        )

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def exists(self, *args: str) -> bool:
        return self.kubectl("get", *args, "-o", "name", check=False).returncode == 0

    # ------------------------------------------------------------------ namespaces
    def create_namespace(self, name: str) -> str:
        """A namespace that enforces the "restricted" Pod Security Standard."""
        manifest = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "k2think.dev/e2e": "install",
                },
            },
        }
        self.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(manifest))
        return name

    def delete_namespace(self, name: str) -> None:
        self.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)

    # ------------------------------------------------------------------ ServiceAccount access
    def sa_kubeconfig(self, namespace: str, sa: str, path: Path) -> Path:
        """A kubeconfig that authenticates as ``sa`` with a TokenRequest token: no admin cert."""
        token = self.kubectl(
            "create", "token", sa, "-n", namespace, "--duration=3600s"
        ).stdout.strip()
        admin = self.kubectl_json("config", "view", "--raw", "--minify")
        cluster = admin["clusters"][0]["cluster"]
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "e2e", "cluster": cluster}],
            "users": [{"name": f"{namespace}:{sa}", "user": {"token": token}}],
            "contexts": [
                {"name": "sa", "context": {"cluster": "e2e", "user": f"{namespace}:{sa}"}}
            ],
            "current-context": "sa",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        who = self.kubectl("auth", "whoami", "-o", "json", kubeconfig=path)
        username = json.loads(who.stdout)["status"]["userInfo"]["username"]
        assert username == f"system:serviceaccount:{namespace}:{sa}", username
        return path

    def can_i(self, kubeconfig: Path, verb: str, resource: str, *scope: str) -> bool:
        proc = self.kubectl(
            "auth", "can-i", verb, resource, *scope, kubeconfig=kubeconfig, check=False
        )
        answer = proc.stdout.strip()
        if answer not in ("yes", "no"):
            raise CommandError(f"can-i {verb} {resource} {scope}: {proc.stdout} {proc.stderr}")
        return answer == "yes"

    # ------------------------------------------------------------------ waiting
    def wait_rayservice(self, namespace: str, name: str, timeout: float = 90.0) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            proc = self.kubectl(
                "get", "rayservice", name, "-n", namespace, "-o", "json", check=False
            )
            return json.loads(proc.stdout) if proc.returncode == 0 else None

        result: dict[str, Any] = wait_for(f"RayService {namespace}/{name}", probe, timeout=timeout)
        return result

    def wait_observed(self, namespace: str, name: str, timeout: float = 90.0) -> dict[str, Any]:
        """The K2ThinkDeployment once its status describes its current generation."""

        def probe() -> dict[str, Any] | None:
            obj = self.kubectl_json("get", "k2t", name, "-n", namespace)
            status = obj.get("status") or {}
            if status.get("observedGeneration") == obj["metadata"]["generation"] and status.get(
                "conditions"
            ):
                return dict(obj)
            return None

        result: dict[str, Any] = wait_for(
            f"status of K2ThinkDeployment {namespace}/{name}", probe, timeout=timeout
        )
        return result


@contextmanager
def local_operator(
    kubeconfig: Path, workdir: Path, *watch: str, extra: Sequence[str] = ()
) -> Iterator[OperatorProcess]:
    """``k2think-operator run`` on this machine with ``kubeconfig`` (a ServiceAccount token).

    ``watch``: namespaces; none means ``--all-namespaces``. ``extra``: more ``run`` flags (as the
    chart's Deployment passes them). Stopped (SIGTERM, then SIGKILL) on exit.
    """
    scope = [f"--namespace={ns}" for ns in watch] or ["--all-namespaces"]
    op = OperatorProcess(
        args=[*scope, "--log-format=text", *extra],
        state_dir=workdir,
        env={"KUBECONFIG": str(kubeconfig), "K2T_RETRY_SECONDS": "2"},
    )
    try:
        try:
            op.start(timeout=60)
        except OperatorExited as exc:
            raise CommandError(str(exc)) from exc
        yield op
    finally:
        op.stop(timeout=20)


# ---------------------------------------------------------------------- shared checks

#: What the operator's ServiceAccount may do in a namespace it serves (verb, resource).
ALLOWED = [
    ("list", "k2thinkdeployments.k2think.dev"),
    ("watch", "k2thinkdeployments.k2think.dev"),
    ("patch", "k2thinkdeployments.k2think.dev"),
    ("patch", "k2thinkdeployments.k2think.dev/status"),
    ("create", "rayservices.ray.io"),
    ("patch", "rayservices.ray.io"),
    ("watch", "rayservices.ray.io"),
    ("list", "pods"),
    ("watch", "pods"),
    ("create", "events"),
    ("create", "secrets"),
    ("create", "configmaps"),
    ("patch", "configmaps"),
    ("create", "networkpolicies.networking.k8s.io"),
    ("patch", "networkpolicies.networking.k8s.io"),
    # The model cache: its status, the fill Jobs and the claim it may create.
    ("watch", "k2thinkmodelcaches.k2think.dev"),
    ("patch", "k2thinkmodelcaches.k2think.dev/status"),
    ("create", "jobs.batch"),
    ("watch", "jobs.batch"),
    ("get", "persistentvolumeclaims"),
    ("create", "persistentvolumeclaims"),
    ("list", "workloads.kueue.x-k8s.io"),
    ("patch", "workloads.kueue.x-k8s.io"),
    ("get", "localqueues.kueue.x-k8s.io"),
]
#: What it must never be able to do, wherever it is asked.
DENIED = [
    ("get", "secrets"),
    ("list", "secrets"),
    ("watch", "secrets"),
    ("patch", "secrets"),
    ("update", "secrets"),
    ("delete", "secrets"),
    ("get", "configmaps"),
    ("delete", "configmaps"),
    ("get", "networkpolicies.networking.k8s.io"),
    ("delete", "networkpolicies.networking.k8s.io"),
    ("create", "pods"),
    ("delete", "pods"),
    ("create", "pods/exec"),
    ("delete", "rayservices.ray.io"),
    ("update", "rayservices.ray.io"),
    ("delete", "k2thinkdeployments.k2think.dev"),
    ("create", "k2thinkdeployments.k2think.dev"),
    ("update", "k2thinkdeployments.k2think.dev"),
    ("delete", "events"),
    ("create", "serviceaccounts/token"),
    ("create", "deployments.apps"),
    ("create", "rayclusters.ray.io"),
    ("create", "roles.rbac.authorization.k8s.io"),
    ("create", "rolebindings.rbac.authorization.k8s.io"),
    # Weights are never deleted by the operator (the fill Job prunes old revisions itself).
    ("delete", "persistentvolumeclaims"),
    ("patch", "persistentvolumeclaims"),
    ("delete", "jobs.batch"),
    ("update", "jobs.batch"),
    ("delete", "k2thinkmodelcaches.k2think.dev"),
    ("delete", "workloads.kueue.x-k8s.io"),
    ("create", "workloads.kueue.x-k8s.io"),
    ("patch", "localqueues.kueue.x-k8s.io"),
    ("create", "clusterqueues.kueue.x-k8s.io"),
]
#: Cluster-scoped things it must never do.
DENIED_CLUSTER = [
    ("delete", "namespaces"),
    ("create", "namespaces"),
    ("list", "nodes"),
    ("patch", "nodes"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io"),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io"),
    ("update", "customresourcedefinitions.apiextensions.k8s.io"),
    ("create", "clusterroles.rbac.authorization.k8s.io"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("bind", "clusterroles.rbac.authorization.k8s.io"),
    ("escalate", "clusterroles.rbac.authorization.k8s.io"),
    ("impersonate", "users"),
    ("impersonate", "serviceaccounts"),
]


def assert_least_privilege(
    tools: Tools,
    kubeconfig: Path,
    *,
    served: Sequence[str],
    unserved: Sequence[str] = (),
    cluster_wide: bool,
    crd_watch: bool,
    namespace_watch: bool = False,
) -> None:
    """``kubectl auth can-i`` with the ServiceAccount's own token."""
    problems = []

    def expect(want: bool, verb: str, resource: str, *scope: str) -> None:
        if tools.can_i(kubeconfig, verb, resource, *scope) != want:
            where = " ".join(scope) or "(cluster)"
            problems.append(f"can {'not ' if want else ''}{verb} {resource} {where}")

    for ns in served:
        for verb, resource in ALLOWED:
            expect(True, verb, resource, "-n", ns)
        for verb, resource in DENIED:
            expect(False, verb, resource, "-n", ns)
    for ns in unserved:
        for verb, resource in ALLOWED:
            expect(False, verb, resource, "-n", ns)
    for verb, resource in DENIED:
        expect(False, verb, resource, "--all-namespaces")
    for verb, resource in DENIED_CLUSTER:
        expect(False, verb, resource)
    expect(cluster_wide, "list", "k2thinkdeployments.k2think.dev", "--all-namespaces")
    expect(cluster_wide, "watch", "pods", "--all-namespaces")
    expect(crd_watch, "watch", "customresourcedefinitions.apiextensions.k8s.io")
    expect(namespace_watch, "list", "namespaces")
    expect(namespace_watch, "watch", "namespaces")
    expect(False, "get", "namespaces")
    expect(False, "get", "customresourcedefinitions.apiextensions.k8s.io")
    assert not problems, "least privilege violated:\n  " + "\n  ".join(problems)


def strip_finalizers(tools: Tools, namespace: str) -> None:
    """Let a namespace go whose K2ThinkDeployments outlived their operator (kopf's finalizer)."""
    proc = tools.kubectl("get", "k2t", "-n", namespace, "-o", "name", check=False)
    for ref in proc.stdout.split():
        tools.kubectl(
            "patch",
            ref,
            "-n",
            namespace,
            "--type=merge",
            "-p",
            '{"metadata":{"finalizers":null}}',
            check=False,
        )


#: A 403 status in a log line; not the milliseconds of a timestamp like ``21:40:29,403``.
HTTP_403 = re.compile(r"(?<![,.\d])\b403\b")


def forbidden_lines(log: str, *allowed: str) -> list[str]:
    """Log lines that report an API call the operator was not allowed to make, except those
    naming one of ``allowed`` (URL parts of calls kopf is known to try and then do without)."""
    return [
        line
        for line in log.splitlines()
        if (HTTP_403.search(line) or "Forbidden" in line or "forbidden" in line)
        and not any(a in line for a in allowed)
    ]


def apply_example(tools: Tools, namespace: str) -> dict[str, Any]:
    tools.kubectl("apply", "--server-side", "-n", namespace, "-f", str(EXAMPLE))
    obj: dict[str, Any] = tools.kubectl_json("get", "k2t", "k2think", "-n", namespace)
    return obj


def assert_reconciled(tools: Tools, namespace: str, timeout: float = 90.0) -> dict[str, Any]:
    """The example became a RayService owned by it, with a status and an Event; spec untouched."""
    from k2think_operator.render.meta import FIELD_MANAGER, MANAGED_BY_LABEL

    cr = tools.kubectl_json("get", "k2t", "k2think", "-n", namespace)
    rs = tools.wait_rayservice(namespace, "k2think", timeout=timeout)
    owners = rs["metadata"].get("ownerReferences") or []
    assert [(o["kind"], o["name"], o["uid"]) for o in owners] == [
        ("K2ThinkDeployment", "k2think", cr["metadata"]["uid"])
    ]
    assert rs["metadata"]["labels"][MANAGED_BY_LABEL] == FIELD_MANAGER
    cr = tools.wait_observed(namespace, "k2think")
    assert cr["status"]["plan"]["tensorParallel"] >= 2, cr["status"]["plan"]
    # The security objects, made with the chart's RBAC (create-only on Secrets; docs/security.md).
    assert rs["spec"]["rayClusterConfig"]["authOptions"]["secretName"] == "k2think-ray-token"
    assert tools.exists("secret", "k2think-ray-token", "-n", namespace)
    policies = tools.kubectl_json("get", "networkpolicies", "-n", namespace)["items"]
    assert sorted(p["metadata"]["name"] for p in policies) == [
        "k2think-ray-internal",
        "k2think-serve",
    ]
    # kopf posted Events about the object (core/v1 events: create is all it needs).
    events = tools.kubectl_json(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        "involvedObject.kind=K2ThinkDeployment,involvedObject.name=k2think",
    )["items"]
    assert events, "the operator posted no Event"
    return cr


def assert_gitops_clean(tools: Tools, namespace: str) -> None:
    """Re-applying the CR changes nothing and `kubectl diff` is empty: the operator never writes
    spec (only its status, through the subresource, and kopf's annotations/finalizer)."""
    cr = tools.kubectl_json("get", "k2t", "k2think", "-n", namespace, "--show-managed-fields")
    for entry in cr["metadata"]["managedFields"]:
        if entry["manager"] != "kubectl":
            assert "f:spec" not in entry.get("fieldsV1", {}), entry
    for args in (("diff", "--server-side"), ("diff",)):
        proc = tools.kubectl(*args, "-n", namespace, "-f", str(EXAMPLE), check=False)
        assert proc.returncode == 0, (
            f"kubectl {' '.join(args)} reports drift:\n{proc.stdout}{proc.stderr}"
        )
    before = cr["metadata"]
    tools.kubectl("apply", "--server-side", "-n", namespace, "-f", str(EXAMPLE))
    after = tools.kubectl_json("get", "k2t", "k2think", "-n", namespace)["metadata"]
    assert (after["generation"], after["resourceVersion"]) == (
        before["generation"],
        before["resourceVersion"],
    ), "re-applying the same CR was not a no-op"


def lua_harness() -> tuple[str, Any]:
    """(separator, harness(obj) -> Lua source) of tests/test_argocd_health.py, by file path."""
    import importlib.util

    path = ROOT / "tests" / "test_argocd_health.py"
    spec = importlib.util.spec_from_file_location("_k2t_argocd_health", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SEP, module.harness
