"""The kube-scheduler configuration the harness runs when asked for the campus profile.

``docs/scheduling/kube-scheduler-gpu-binpacking.yaml`` is what we recommend to campuses; the
harness runs that very file, adding only what an installation adds (its kubeconfig, no leader
election, a client rate for a busy test machine). With ``--config`` the scheduler ignores its
deprecated flags (``--kubeconfig``, ``--leader-elect``, ``--kube-api-qps``:
``cmd/kube-scheduler/app/options/options.go``), so those go into the file.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .binaries import REPO_ROOT

GPU_BINPACKING_PROFILE = REPO_ROOT / "docs" / "scheduling" / "kube-scheduler-gpu-binpacking.yaml"


def scheduler_configuration(profile: Mapping[str, Any], kubeconfig: Path) -> dict[str, Any]:
    """``profile`` (a KubeSchedulerConfiguration) with the harness's connection settings."""
    config = copy.deepcopy(dict(profile))
    if config.get("kind") != "KubeSchedulerConfiguration":
        raise ValueError("not a KubeSchedulerConfiguration")
    config["clientConnection"] = {"kubeconfig": str(kubeconfig), "qps": 200, "burst": 400}
    config["leaderElection"] = {"leaderElect": False}
    return config


def write_scheduler_config(profile_path: Path, kubeconfig: Path, out: Path) -> Path:
    profile = yaml.safe_load(Path(profile_path).read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(scheduler_configuration(profile, kubeconfig), sort_keys=True))
    return out
