"""The operator's own API client against the real kube-apiserver (issue #20, item 4).

1. ``k2think-operator run`` with a kubeconfig whose only user is an exec credential plugin (a
   script, as ``aws eks get-token`` or ``kubelogin`` would be): the plugin prints a
   ServiceAccount token from the TokenRequest API bound to a Secret, so the API server accepts
   it, and refuses it (401) once that Secret is deleted. The operator reconciles with the first
   token; after the revocation it runs the plugin again and keeps reconciling, in the same
   process.
2. Lists in pages (``limit``/``continue``) of a collection larger than a page, and the restart of
   a list whose snapshot the store compacted away (410 Gone on the ``continue``), against the real
   API server and etcd: the compaction is done as the API server's own compactor does it
   (``compact_rev_key``, then etcd's compact, through etcd's v3 JSON gateway), so the API
   server's watch cache drops its snapshots too.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import Cluster
from k2think_operator.runtime.credentials import from_kubeconfig
from k2think_operator.runtime.kube import Kube, RestClient
from k2think_operator.runtime.resources import Api
from support import (
    OperatorProcess,
    apply_doc,
    eventually,
    get,
    load_example,
    write_plugin_kubeconfig,
)

SA = "k2t-plugin-operator"
BOUND = "k2t-plugin-bound"
CONFIGMAPS = Api("", "v1", "ConfigMap", "configmaps")

#: The plugin: a TokenRequest through the admin kubeconfig (its own credentials, as a cloud CLI
#: has its own), one line per run in a state file, the token on stdout as an ExecCredential.
PLUGIN = """#!{python}
import json, os, subprocess, sys
info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
proc = subprocess.run(
    [{kubectl!r}, "--kubeconfig", {admin!r}, "-n", {ns!r}, "create", "token", {sa!r},
     "--bound-object-kind=Secret", "--bound-object-name={bound}", "--duration=1h"],
    capture_output=True, text=True,
)
if proc.returncode != 0:  # e.g. the Secret it binds to is gone for a moment
    sys.stderr.write(proc.stderr)
    sys.exit(1)
token = proc.stdout.strip()
with open({state!r}, "a") as out:
    out.write(json.dumps({{"token": token, "asked": info["apiVersion"]}}) + "\\n")
print(json.dumps({{"apiVersion": info["apiVersion"], "kind": "ExecCredential",
                  "status": {{"token": token}}}}))
"""


def plugin_kubeconfig(cluster: Cluster, ns: str, directory: Path) -> tuple[Path, Path]:
    """(kubeconfig whose user is the plugin, the plugin's state file)."""
    directory.mkdir(parents=True, exist_ok=True)
    state = directory / "plugin-runs.jsonl"
    plugin = directory / "k2t-token-plugin"
    plugin.write_text(
        PLUGIN.format(
            python=sys.executable,
            kubectl=str(cluster.bindir / "kubectl"),
            admin=str(cluster.kubeconfig),
            ns=ns,
            sa=SA,
            bound=BOUND,
            state=str(state),
        )
    )
    plugin.chmod(0o755)
    return write_plugin_kubeconfig(cluster, plugin, directory / "kubeconfig"), state


def plugin_runs(state: Path) -> list[dict[str, Any]]:
    if not state.exists():
        return []
    return [json.loads(line) for line in state.read_text().splitlines()]


def bound_secret(cluster: Cluster, ns: str) -> None:
    cluster.kubectl("create", "secret", "generic", BOUND, "-n", ns, "--from-literal=k=v")


@pytest.fixture
def plugin_identity(cluster: Cluster, ns: str) -> Iterator[None]:
    cluster.kubectl("create", "serviceaccount", SA, "-n", ns)
    # What the account may do is not the point here (e2e/install proves least privilege).
    cluster.kubectl(
        "create",
        "clusterrolebinding",
        f"{SA}-{ns}",
        "--clusterrole=cluster-admin",
        f"--serviceaccount={ns}:{SA}",
    )
    bound_secret(cluster, ns)
    yield
    cluster.kubectl("delete", "clusterrolebinding", f"{SA}-{ns}", "--ignore-not-found", check=False)


def token_accepted(cluster: Cluster, token: str, directory: Path) -> bool:
    """Whether the API server authenticates ``token``: ``kubectl auth whoami`` with a kubeconfig
    holding only the server and its CA (the admin kubeconfig's client certificate would
    authenticate the request whatever the token)."""
    bare = directory / "token-only-kubeconfig"
    if not bare.exists():
        raw = cluster.kubectl_json("config", "view", "--raw", "--minify")
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": dict(raw["clusters"][0]["cluster"])}],
            "users": [{"name": "token", "user": {"token": token}}],
            "contexts": [{"name": "token", "context": {"cluster": "local", "user": "token"}}],
            "current-context": "token",
        }
        bare.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [str(cluster.bindir / "kubectl"), "--kubeconfig", str(bare), "--token", token, "auth",
         "whoami", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    if proc.returncode != 0 and "Unauthorized" not in proc.stderr:
        raise RuntimeError(proc.stderr)
    if proc.returncode != 0:
        return False
    who = json.loads(proc.stdout)["status"]["userInfo"]["username"]
    assert who.startswith("system:serviceaccount:"), who
    return True


def test_run_with_an_exec_plugin_kubeconfig_renews_a_revoked_token(
    cluster: Cluster, ns: str, log_dir: Path, plugin_identity: None
) -> None:
    kubeconfig, state = plugin_kubeconfig(cluster, ns, log_dir / f"plugin-{ns}")
    op = OperatorProcess(
        cluster,
        ["--namespace", ns],
        log_dir / f"operator-plugin-{ns}.log",
        env={"KUBECONFIG": str(kubeconfig)},
    ).start()
    try:
        apply_doc(cluster, load_example("k2think.yaml", namespace=ns))

        def observed(generation: int) -> dict[str, Any] | None:
            cr = get(cluster, "k2thinkdeployments.k2think.dev", "k2think", ns) or {}
            status = cr.get("status") or {}
            return cr if status.get("observedGeneration") == generation else None

        eventually("the RayService", lambda: get(cluster, "rayservices.ray.io", "k2think", ns))
        eventually("status for generation 1", lambda: observed(1))
        first = plugin_runs(state)
        assert first, "the operator never ran the exec plugin"
        assert {r["asked"] for r in first} == {"client.authentication.k8s.io/v1"}
        token = first[-1]["token"]
        assert token_accepted(cluster, token, kubeconfig.parent)

        # Revoke: the token was bound to this Secret; the API server refuses it from now on.
        cluster.kubectl("delete", "secret", BOUND, "-n", ns)
        eventually(
            "the old token refused", lambda: not token_accepted(cluster, token, kubeconfig.parent)
        )
        bound_secret(cluster, ns)

        # New work for the operator: it meets the 401, runs the plugin again and carries on.
        cluster.kubectl(
            "patch",
            "k2t",
            "k2think",
            "-n",
            ns,
            "--type=merge",
            "-p",
            json.dumps({"spec": {"autoscaling": {"maxReplicas": 7}}}),
        )
        eventually("status for generation 2 after the revocation", lambda: observed(2), 90)
        rs = get(cluster, "rayservices.ray.io", "k2think", ns)
        assert rs is not None and "max_replicas: 7" in rs["spec"]["serveConfigV2"]
        later = plugin_runs(state)
        assert len(later) > len(first), "no new token was asked for after the 401"
        assert later[-1]["token"] != token and token_accepted(
            cluster, later[-1]["token"], kubeconfig.parent
        )
        assert op.alive(), "the operator did not survive the revocation"
    finally:
        op.stop()


class RecordingClient(RestClient):
    """The operator's client, recording each GET's query; ``before_continue(token)`` runs once
    before the first request that carries a ``continue`` token."""

    def __init__(self, *args: Any, before_continue: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queries: list[dict[str, str]] = []
        self.statuses: list[int] = []
        self.before_continue = before_continue

    async def request(
        self, method: str, path: str, *, params: Mapping[str, str] | None = None, **kw: Any
    ) -> Any:
        if params and "continue" in params and self.before_continue is not None:
            hook, self.before_continue = self.before_continue, None
            hook(params["continue"])
        self.queries.append(dict(params or {}))
        try:
            answer = await super().request(method, path, params=params, **kw)
        except Exception as error:
            self.statuses.append(getattr(error, "status", 0))
            raise
        self.statuses.append(200)
        return answer


def etcd_compact(cluster: Cluster) -> int:
    """Compact etcd at its current revision the way the API server's own compactor does
    (``k8s.io/apiserver/pkg/storage/etcd3/compact.go``): record the revision under
    ``compact_rev_key``, then compact, through etcd's v3 JSON gateway on loopback. The API
    server's watch cache learns the revision from that key (it polls every 15 s) and drops its
    older list snapshots; etcd has dropped the older revisions: a ``continue`` from before is
    gone (410) wherever the API server looks."""
    base = f"http://127.0.0.1:{cluster.ports['etcd']}"

    def post(path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            base + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    marker = post("/v3/kv/put", {"key": b64("/k2t-e2e/compaction-marker"), "value": b64("x")})
    revision = int(marker["header"]["revision"])
    post("/v3/kv/put", {"key": b64("compact_rev_key"), "value": b64(str(revision))})
    post("/v3/kv/compaction", {"revision": revision, "physical": True})
    return revision


def continue_gone(cluster: Cluster, ns: str, token: str) -> bool:
    """Whether the API server answers 410 Gone to this ``continue`` token."""
    query = urllib.parse.urlencode({"limit": "5", "continue": token})
    proc = cluster.kubectl(
        "get", "--raw", f"/api/v1/namespaces/{ns}/configmaps?{query}", check=False
    )
    if proc.returncode == 0:
        return False
    if "Expired" in proc.stderr or "410" in proc.stderr or "too old" in proc.stderr:
        return True
    raise RuntimeError(proc.stderr)


def test_lists_page_and_restart_when_the_snapshot_was_compacted(
    cluster: Cluster, ns: str, log_dir: Path, plugin_identity: None
) -> None:
    kubeconfig, state = plugin_kubeconfig(cluster, ns, log_dir / f"plugin-list-{ns}")
    for i in range(12):
        cluster.kubectl("create", "configmap", f"page-{i:02d}", "-n", ns, f"--from-literal=i={i}")
    expected = sorted(
        cm["metadata"]["name"] for cm in cluster.kubectl_json("get", "cm", "-n", ns)["items"]
    )
    assert len(expected) >= 13  # ours and kube-root-ca.crt: more than two pages of 5

    async def listed(before_continue: Any = None) -> tuple[list[str], RecordingClient]:
        client = RecordingClient(from_kubeconfig([kubeconfig]), before_continue=before_continue)
        kube = Kube(client, "k2think-operator")
        try:
            found = await kube.list(CONFIGMAPS, ns, page_size=5)
        finally:
            await kube.close()
        return sorted(o["metadata"]["name"] for o in found), client

    names, client = asyncio.run(listed())
    assert names == expected
    pages = -(-len(expected) // 5)
    assert len(client.queries) == pages, client.queries
    assert all(q["limit"] == "5" for q in client.queries)
    assert "continue" not in client.queries[0]
    assert all("continue" in q for q in client.queries[1:])
    assert plugin_runs(state), "the list did not authenticate through the plugin"

    # The snapshot of the list is compacted away between its first and second page.
    def compact(token: str) -> None:
        etcd_compact(cluster)
        eventually(
            "the API server to refuse the continue token (410)",
            lambda: continue_gone(cluster, ns, token),
            timeout=90,
        )

    names, client = asyncio.run(listed(before_continue=compact))
    assert names == expected
    assert 410 in client.statuses, (client.statuses, client.queries)
    gone = client.statuses.index(410)
    assert "continue" in client.queries[gone]
    # Then the list started over from the beginning (no continue token) and finished.
    assert "continue" not in client.queries[gone + 1]
    assert client.statuses[gone + 1 :] == [200] * (len(client.statuses) - gone - 1)
