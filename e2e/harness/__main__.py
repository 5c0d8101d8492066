"""``python -m harness`` (with ``e2e/`` on PYTHONPATH): bring the local test ground up or down.

    python -m harness up [--campus FILE] [--with-kuberay] [--with-kueue] [--gpu-binpacking]
                         [--name NAME | --state-dir DIR]
    python -m harness down [--name NAME | --state-dir DIR] [--keep-state]
    python -m harness status [--name NAME | --state-dir DIR]
    python -m harness kuberay start|stop [--name NAME | --state-dir DIR]
    python -m harness bindir

``up`` prints ``export KUBECONFIG=...`` on stdout (progress goes to stderr) and returns, leaving
the processes running in their own sessions; their pids are in the state dir for ``down``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .binaries import find_bindir
from .campus import CampusError
from .cluster import DEFAULT_CAMPUS, STATE_ROOT, Cluster, HarnessError, down
from .kubeapi import ApiError
from .processes import recorded
from .scheduling import GPU_BINPACKING_PROFILE


def _state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir).resolve() if args.state_dir else STATE_ROOT / args.name


def _add_state(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", default="default", help="cluster name (state dir e2e/.state/NAME)")
    p.add_argument("--state-dir", help="state dir (overrides --name)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)

    up = sub.add_parser("up", help="start the control plane and the campus, then return")
    _add_state(up)
    up.add_argument("--campus", default=str(DEFAULT_CAMPUS), help="campus file ('' for none)")
    up.add_argument("--with-kuberay", action="store_true", help="also run the KubeRay operator")
    up.add_argument(
        "--with-kueue", action="store_true", help="also run Kueue (RayService integration)"
    )
    up.add_argument(
        "--gpu-binpacking",
        action="store_true",
        help="run the scheduler with docs/scheduling/kube-scheduler-gpu-binpacking.yaml",
    )
    up.add_argument(
        "--crd",
        action="append",
        default=None,
        help="CRD file to install (repeatable; default: crds/*.yaml of this repo)",
    )
    up.add_argument(
        "--no-crds", action="store_true", help="install none of this repo's CRDs (KubeRay's only)"
    )
    up.add_argument("--timeout", type=float, default=300.0)

    dn = sub.add_parser("down", help="stop every process of the cluster and remove its state")
    _add_state(dn)
    dn.add_argument("--keep-state", action="store_true", help="keep logs, certs and etcd data")

    st = sub.add_parser("status", help="show the recorded processes")
    _add_state(st)

    kr = sub.add_parser("kuberay", help="start or stop the KubeRay operator of a running cluster")
    kr.add_argument("action", choices=["start", "stop"])
    _add_state(kr)
    kr.add_argument("--watch-namespace")

    sub.add_parser("bindir", help="build the binaries if needed and print their directory")

    args = parser.parse_args(argv)
    try:
        if args.cmd == "up":
            cluster = Cluster.start(
                campus=args.campus or None,
                kuberay=args.with_kuberay,
                state_dir=_state_dir(args),
                crds=[] if args.no_crds else args.crd,
                detach=True,
                timeout=args.timeout,
                kueue=args.with_kueue,
                scheduler_profile=GPU_BINPACKING_PROFILE if args.gpu_binpacking else None,
            )
            print(f"export KUBECONFIG={cluster.kubeconfig}")
        elif args.cmd == "down":
            stopped = down(_state_dir(args), remove_state=not args.keep_state)
            print(f"stopped: {', '.join(stopped) or 'nothing was running'}", file=sys.stderr)
        elif args.cmd == "status":
            sd = _state_dir(args)
            procs = recorded(sd) if sd.exists() else []
            info = {p.name: {"pid": p.pid, "alive": p.alive(), "log": str(p.log)} for p in procs}
            print(json.dumps({"state_dir": str(sd), "processes": info}, indent=1))
            return 0 if procs and all(v["alive"] for v in info.values()) else 1
        elif args.cmd == "kuberay":
            cluster = Cluster.attach(_state_dir(args))
            cluster.detached = True
            if args.action == "start":
                cluster.start_kuberay(watch_namespace=args.watch_namespace)
            else:
                cluster.stop_kuberay()
        elif args.cmd == "bindir":
            print(find_bindir())
    except (HarnessError, CampusError, ApiError, FileNotFoundError) as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
