"""Where the control-plane binaries are: the cache directory built by build-binaries.sh."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

E2E_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = E2E_DIR.parent
BUILD_SCRIPT = E2E_DIR / "scripts" / "build-binaries.sh"

BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
    "ray-operator",
    "helm",
)
KWOK_STAGES = ("node-initialize", "node-heartbeat", "pod-ready", "pod-complete", "pod-delete")


class BinariesMissingError(RuntimeError):
    pass


def check_bindir(bindir: Path) -> Path:
    missing = [b for b in BINARIES if not os.access(bindir / b, os.X_OK)]
    if missing:
        raise BinariesMissingError(f"{bindir} lacks {', '.join(missing)}; run `make binaries`")
    return bindir


def find_bindir(*, build: bool = True) -> Path:
    """The directory holding every binary.

    ``$K2T_BINDIR`` wins if set. Otherwise ask ``build-binaries.sh``: with ``build`` it builds
    whatever is missing (slow only the first time on a machine), without it it only prints the
    directory the current versions map to.
    """
    env = os.environ.get("K2T_BINDIR")
    if env:
        return check_bindir(Path(env).resolve())
    args = ["bash", str(BUILD_SCRIPT)] + ([] if build else ["--print"])
    out = subprocess.run(args, check=True, stdout=subprocess.PIPE, text=True).stdout
    return check_bindir(Path(out.strip().splitlines()[-1]))


def kube_router_binary() -> Path:
    """kube-router, the chain ground's NetworkPolicy agent (its own cache directory, keyed by
    ``KUBE_ROUTER_VERSION``; built with the rest by ``build-binaries.sh``)."""
    return component_binary("--print-kube-router", "kube-router")


def component_dir(print_flag: str) -> Path:
    """An optional component's cache directory, which ``build-binaries.sh <print_flag>`` names
    (without building anything)."""
    out = subprocess.run(
        ["bash", str(BUILD_SCRIPT), print_flag],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    return Path(out.strip().splitlines()[-1])


def component_binary(print_flag: str, name: str) -> Path:
    """An optional component's binary in its own cache directory (:func:`component_dir`)."""
    binary = component_dir(print_flag) / name
    if not os.access(binary, os.X_OK):
        raise BinariesMissingError(f"{binary} is missing; run `make binaries`")
    return binary


def kuberay_crds(bindir: Path) -> list[Path]:
    crds = sorted((bindir / "crds" / "kuberay").glob("*.yaml"))
    if not crds:
        raise BinariesMissingError(f"no KubeRay CRDs under {bindir / 'crds' / 'kuberay'}")
    return crds


#: Stage files kept in the repo (KWOK's opt-in chaos stages, copied from its module): a pod
#: labelled for one fails instead of completing (the model cache's failed-fill test).
REPO_KWOK_STAGES = Path(__file__).resolve().parent / "kwok-stages"


def kwok_stages(bindir: Path) -> list[Path]:
    paths = [bindir / "kwok-stages" / f"{s}.yaml" for s in KWOK_STAGES]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise BinariesMissingError(f"missing KWOK stage files: {missing}")
    return paths + sorted(REPO_KWOK_STAGES.glob("*.yaml"))


def our_crds() -> list[Path]:
    """This repo's CRDs (``crds/*.yaml``); empty while none exist yet."""
    return sorted((REPO_ROOT / "crds").glob("*.yaml"))
