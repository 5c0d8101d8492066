"""The pure parts of the fleet test ground: Kueue's out-of-cluster config and webhooks, and the
scheduler profile the harness runs (the processes themselves are proven by make test-fleet)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "e2e") not in sys.path:
    sys.path.insert(0, str(ROOT / "e2e"))

from harness.kueue import configuration, webhook_configurations  # noqa: E402
from harness.scheduling import GPU_BINPACKING_PROFILE, scheduler_configuration  # noqa: E402


def hook(name: str, groups: list[str], resources: list[str], path: str) -> dict[str, Any]:
    return {
        "name": name,
        "clientConfig": {"service": {"name": "webhook-service", "path": path}},
        "rules": [{"apiGroups": groups, "resources": resources, "operations": ["CREATE"]}],
        "failurePolicy": "Fail",
    }


def test_kueue_configuration_is_local_and_enables_rayservice_elastic_jobs() -> None:
    cfg = configuration(webhook_port=1, cert_dir=Path("/c"), health_port=2, metrics_port=3)
    assert cfg["apiVersion"] == "config.kueue.x-k8s.io/v1beta2"
    assert cfg["webhook"] == {"host": "127.0.0.1", "port": 1, "certDir": "/c"}
    assert cfg["internalCertManagement"] == {"enable": False}
    assert cfg["integrations"]["frameworks"] == ["ray.io/rayservice"]
    assert cfg["featureGates"]["ElasticJobsViaWorkloadSlices"] is True
    assert "waitForPodsReady" not in cfg  # off: KWOK pods, RayServices never Ready without Ray
    assert cfg["leaderElection"] == {"leaderElect": False}
    assert cfg["health"]["healthProbeBindAddress"].startswith("127.0.0.1:")


def test_webhooks_point_at_loopback_and_skip_other_kinds() -> None:
    docs: list[dict[str, Any]] = [
        {
            "kind": "MutatingWebhookConfiguration",
            "webhooks": [
                hook("mrayservice.kb.io", ["ray.io"], ["rayservices"], "/mutate-ray-io-v1-rs"),
                hook("mraycluster.kb.io", ["ray.io"], ["rayclusters"], "/mutate-rc"),
                hook("mpod.kb.io", [""], ["pods"], "/mutate--v1-pod"),
                hook("mcq.kb.io", ["kueue.x-k8s.io"], ["clusterqueues"], "/mutate-cq"),
            ],
        },
        {"kind": "ValidatingWebhookConfiguration", "webhooks": []},
    ]
    mutating, validating = webhook_configurations(docs, port=9443, ca_bundle="Q0E=")
    assert mutating["metadata"]["name"] == "k2t-kueue-mutating"
    assert [h["name"] for h in mutating["webhooks"]] == ["mrayservice.kb.io", "mcq.kb.io"]
    assert mutating["webhooks"][0]["clientConfig"] == {
        "url": "https://127.0.0.1:9443/mutate-ray-io-v1-rs",
        "caBundle": "Q0E=",
    }
    assert validating["webhooks"] == []
    assert docs[0]["webhooks"][0]["clientConfig"]["service"]  # input left alone


def test_scheduler_runs_the_published_profile_plus_connection_settings() -> None:
    profile = yaml.safe_load(GPU_BINPACKING_PROFILE.read_text())
    cfg = scheduler_configuration(profile, Path("/k/kubeconfig"))
    assert cfg["profiles"] == profile["profiles"]
    assert cfg["clientConnection"]["kubeconfig"] == "/k/kubeconfig"
    assert cfg["leaderElection"] == {"leaderElect": False}
    (fit,) = [p for p in cfg["profiles"][0]["pluginConfig"] if p["name"] == "NodeResourcesFit"]
    strategy = fit["args"]["scoringStrategy"]
    assert strategy["type"] == "MostAllocated"
    weights = {r["name"]: r["weight"] for r in strategy["resources"]}
    assert weights["nvidia.com/gpu"] > weights["cpu"] and weights["amd.com/gpu"] > weights["memory"]
