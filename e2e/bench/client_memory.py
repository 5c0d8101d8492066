"""What an exec-plugin login costs the operator in memory: kopf's ``login_via_client`` with the
official ``kubernetes`` client against the operator's own credentials code, side by side.

    .venv/bin/python e2e/bench/client_memory.py [--rounds 3] [--kubernetes 37.0.3]

Starts a local control plane, makes a kubeconfig whose user is an exec credential plugin (a
script printing a ServiceAccount token from the TokenRequest API), and runs, in fresh
interpreters of the operator's venv, alternately, ``--rounds`` times each:

* ``baseline``: ``import kopf`` and the operator's runtime (what every variant pays);
* ``own``: that, plus the operator's login (``runtime/credentials.py`` + ``kopf_adapter``:
  runs the plugin) and one GET of ``/api/v1/namespaces`` with its client;
* ``official``: that baseline, plus kopf's ``login_via_client`` (``kubernetes.config.
  load_kube_config``, which runs the plugin) and the same GET through ``kubernetes.client``.

The official client is installed with pip into a folder of its own under ``e2e/.state/`` (from
PyPI, once), appended to ``sys.path`` of the ``official`` runs only (after the venv's packages):
installed into the venv, it would be in every variant's (and the operator's) memory. Each run prints its resident set (``VmRSS``) and peak
(``VmHWM``) after the GET; the median per variant is printed with the machine's load average.
A benchmark, not a test: it asserts nothing but that every login reached the API server.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

E2E = Path(__file__).resolve().parent.parent
ROOT = E2E.parent
sys.path[:0] = [str(E2E), str(ROOT)]


from harness import Cluster  # noqa: E402
from support import write_plugin_kubeconfig  # noqa: E402

SA = "bench-login"

_RSS = """
def rss():
    fields = dict(l.split(':', 1) for l in open('/proc/self/status') if ':' in l)
    kib = lambda k: int(fields[k].split()[0])
    return {'rss_mib': kib('VmRSS') / 1024, 'hwm_mib': kib('VmHWM') / 1024}
"""

CHILD = {
    "baseline": _RSS
    + """
import json, kopf
from k2think_operator.runtime import credentials, kopf_adapter, kube
print(json.dumps({**rss(), 'namespaces': None}))
""",
    "own": _RSS
    + """
import asyncio, json, kopf
from k2think_operator.runtime import credentials, kopf_adapter, kube
async def main():
    creds = credentials.load_credentials()
    info = await kopf_adapter.connection_info(creds)
    client = kube.RestClient(creds)
    try:
        found = await client.request('GET', '/api/v1/namespaces')
    finally:
        await client.close()
    assert info.token
    return len(found['items'])
n = asyncio.run(main())
print(json.dumps({**rss(), 'namespaces': n}))
""",
    "official": _RSS
    + """
import json, logging, os, sys
# After the venv's own packages: only what the venv lacks (kubernetes and its own needs) comes
# from the folder, so kopf, aiohttp and pydantic are the same as in the other variants.
sys.path.append(os.environ['K2T_BENCH_OFFICIAL'])
import kopf
from k2think_operator.runtime import credentials, kopf_adapter, kube
from kopf._core.intents.piggybacking import login_via_client
import kubernetes.client
info = login_via_client(logger=logging.getLogger('bench'), settings=kopf.OperatorSettings())
assert info is not None and info.token
n = len(kubernetes.client.CoreV1Api().list_namespace().items)
print(json.dumps({**rss(), 'namespaces': n}))
""",
}


def install_official(version: str) -> Path:
    target = E2E / ".state" / f"bench-kubernetes-{version}"
    if not (target / "kubernetes").is_dir():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--target",
                str(target),
                f"kubernetes=={version}",
            ],
            check=True,
        )
    return target


def plugin_kubeconfig(cluster: Cluster, directory: Path) -> Path:
    cluster.kubectl("create", "serviceaccount", SA, "-n", "default")
    cluster.kubectl(
        "create", "clusterrolebinding", SA, "--clusterrole=view", f"--serviceaccount=default:{SA}"
    )
    token = cluster.kubectl("create", "token", SA, "-n", "default", "--duration=2h").stdout.strip()
    plugin = directory / "bench-token-plugin"
    credential = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {"token": token},
    }
    plugin.write_text(f"#!/bin/sh\ncat <<'EOF'\n{json.dumps(credential)}\nEOF\n")
    plugin.chmod(0o755)
    return write_plugin_kubeconfig(cluster, plugin, directory / "plugin-kubeconfig")


def run(variant: str, kubeconfig: Path, official: Path) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env["KUBECONFIG"] = str(kubeconfig)
    env["K2T_BENCH_OFFICIAL"] = str(official)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD[variant]], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kubernetes", default="37.0.3")
    args = parser.parse_args()
    official = install_official(args.kubernetes)
    cluster = Cluster.start(name="bench-client", campus=None, kuberay=False)
    try:
        assert cluster.state_dir is not None
        kubeconfig = plugin_kubeconfig(cluster, cluster.state_dir)
        results: dict[str, list[dict[str, float]]] = {v: [] for v in CHILD}
        for _ in range(args.rounds):
            for variant in CHILD:
                results[variant].append(run(variant, kubeconfig, official))
        load = os.getloadavg()
        print(
            f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
            f"kubernetes=={args.kubernetes}, {args.rounds} runs each (median)"
        )
        base = statistics.median(r["rss_mib"] for r in results["baseline"])
        for variant, runs in results.items():
            rss = statistics.median(r["rss_mib"] for r in runs)
            hwm = statistics.median(r["hwm_mib"] for r in runs)
            seen = {r["namespaces"] for r in runs}
            print(
                f"{variant:9s} RSS {rss:6.1f} MiB  peak {hwm:6.1f} MiB  "
                f"over baseline {rss - base:+6.1f} MiB  namespaces listed {sorted(map(str, seen))}"
            )
        print(
            json.dumps(
                {
                    "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "load": load,
                    "results": results,
                }
            )
        )
    finally:
        cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
