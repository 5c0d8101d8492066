"""Security objects and hardening the renderer adds to every deployment (issue #16).

Token auth, NetworkPolicies, pod hardening and the API-key ingress, as rendered (pure), and how
the reconciler converges the supporting objects. What Ray and KubeRay do with them is proven on
real Ray in e2e/dataplane/test_40_security.py and on the local control plane in
e2e/test_security.py.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

from k2think_operator.api.spec import INGRESS_GROUP
from k2think_operator.deployment.controller import DeploymentReconciler, decide
from k2think_operator.deployment.supporting import supporting_children
from k2think_operator.render import render_yaml
from k2think_operator.render.meta import digest
from k2think_operator.render.security import (
    API_KEYS_DIR,
    INGRESS_CLASS,
    INGRESS_PYTHONPATH,
    SA_TOKEN_PATH,
)
from k2think_operator.render.serve_config import effective_ingress_options
from tests.conftest import ROOT, minimal_doc
from tests.test_reconcile import RecordingKube, with_status

INGRESS_FILE = ROOT / "operator" / "k2think_operator" / "ray_modules" / "k2think_api_key_ingress.py"


def children(doc: dict[str, Any]) -> list[dict[str, Any]]:
    decision = decide(doc)
    assert not decision.problems, decision.problems
    return list(decision.children)


def of_kind(items: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [c for c in items if c["kind"] == kind]


def cluster(items: list[dict[str, Any]]) -> dict[str, Any]:
    config: dict[str, Any] = items[0]["spec"]["rayClusterConfig"]
    return config


def pod_specs(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    config = cluster(items)
    groups = [config["headGroupSpec"], *config["workerGroupSpecs"]]
    return [g["template"]["spec"] for g in groups]


def owned(child: dict[str, Any], doc: dict[str, Any]) -> bool:
    refs = child["metadata"].get("ownerReferences") or []
    return [r["uid"] for r in refs] == [doc["metadata"]["uid"]] and refs[0]["controller"]


# ------------------------------------------------------------------------------ token auth


def test_token_auth_is_on_by_default_with_an_operator_secret() -> None:
    doc = minimal_doc()
    items = children(doc)
    assert cluster(items)["authOptions"] == {"mode": "token", "secretName": "demo-ray-token"}
    (secret,) = of_kind(items, "Secret")
    assert secret["metadata"]["name"] == "demo-ray-token"
    assert owned(secret, doc)
    # Rendered without content: the token is generated once, at creation, never re-rendered.
    assert "data" not in secret and "stringData" not in secret


def test_a_user_secret_is_referenced_not_created() -> None:
    items = children(minimal_doc(ray={"auth": {"secretName": "my-token"}}))
    assert cluster(items)["authOptions"] == {"mode": "token", "secretName": "my-token"}
    assert of_kind(items, "Secret") == []


def test_auth_off_renders_no_auth_and_warns() -> None:
    doc = with_status(minimal_doc(ray={"auth": {"enabled": False}}), {})
    items = children(doc)
    assert "authOptions" not in cluster(items)
    assert of_kind(items, "Secret") == []
    outcome = asyncio.run(DeploymentReconciler(RecordingKube()).converge(doc))
    warnings = [e for e in outcome.events if e.warning and e.reason == "RayAuthDisabled"]
    assert len(warnings) == 1


def test_the_rayversion_satisfies_kuberay_token_minimum() -> None:
    # KubeRay refuses token mode below Ray 2.52.0 (validation.go, ValidateRayClusterSpec).
    version = tuple(int(p) for p in cluster(children(minimal_doc()))["rayVersion"].split("."))
    assert version >= (2, 52, 0)


# ------------------------------------------------------------------------------ pods


def test_ray_pods_run_restricted_and_keep_dev_shm() -> None:
    for pod in pod_specs(children(minimal_doc())):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 1000
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        (container,) = pod["containers"]
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert {"mountPath": "/dev/shm", "name": "dshm"} in container["volumeMounts"]
        assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]


def test_no_pod_container_holds_a_service_account_token_but_the_autoscaler() -> None:
    items = children(minimal_doc())
    head, *workers = pod_specs(items)
    assert all(p["automountServiceAccountToken"] is False for p in [head, *workers])
    # Only KubeRay's autoscaler sidecar gets the token, at the path Ray's node provider reads.
    options = cluster(items)["autoscalerOptions"]
    (mount,) = options["volumeMounts"]
    assert mount["mountPath"] == SA_TOKEN_PATH
    volume = next(v for v in head["volumes"] if v["name"] == mount["name"])
    sources = volume["projected"]["sources"]
    assert {"serviceAccountToken", "configMap", "downwardAPI"} == {next(iter(s)) for s in sources}
    assert options["securityContext"]["allowPrivilegeEscalation"] is False
    assert all(mount["name"] not in str(p["containers"]) for p in [head, *workers])


def test_workers_may_ask_for_their_token() -> None:
    items = children(minimal_doc(ray={"workerServiceAccountToken": True}))
    _, *workers = pod_specs(items)
    assert all("automountServiceAccountToken" not in w for w in workers)


# ------------------------------------------------------------------------------ NetworkPolicies


def test_network_policies_by_default() -> None:
    doc = minimal_doc()
    policies = {p["metadata"]["name"]: p for p in of_kind(children(doc), "NetworkPolicy")}
    assert sorted(policies) == ["demo-ray-internal", "demo-serve"]
    for policy in policies.values():
        assert owned(policy, doc)
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        assert policy["spec"]["podSelector"] == {
            "matchLabels": {
                "app.kubernetes.io/name": "k2think",
                "app.kubernetes.io/instance": "demo",
            }
        }
    own, kuberay = policies["demo-ray-internal"]["spec"]["ingress"]
    assert own == {"from": [{"podSelector": policies["demo-serve"]["spec"]["podSelector"]}]}
    assert "ports" not in own  # Ray's internal ports are many and partly random
    assert kuberay["from"] == [
        {
            "namespaceSelector": {},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}},
        }
    ]
    assert [p["port"] for p in kuberay["ports"]] == [8265, 8000]
    (serve,) = policies["demo-serve"]["spec"]["ingress"]
    # A peer with only a podSelector means: pods of the policy's own namespace.
    assert serve == {"from": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": 8000}]}


def test_network_policies_follow_the_spec() -> None:
    items = children(
        minimal_doc(
            networkPolicy={
                "serveFrom": [
                    {"namespace": "gateway", "podLabels": {"app": "envoy"}},
                    {"podLabels": {"role": "client"}},
                ],
                "monitoringNamespace": "monitoring",
                "kuberay": {"namespace": "kuberay-system"},
            }
        )
    )
    policies = {p["metadata"]["name"]: p for p in of_kind(items, "NetworkPolicy")}
    (serve,) = policies["demo-serve"]["spec"]["ingress"]
    assert serve["from"] == [
        {
            "podSelector": {"matchLabels": {"app": "envoy"}},
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}},
        },
        {"podSelector": {"matchLabels": {"role": "client"}}},
    ]
    (metrics,) = policies["demo-metrics"]["spec"]["ingress"]
    assert metrics == {
        "from": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ],
        "ports": [{"protocol": "TCP", "port": 8080}],
    }
    kuberay = policies["demo-ray-internal"]["spec"]["ingress"][1]["from"][0]
    assert kuberay["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "kuberay-system"}
    }


def test_network_policies_can_be_switched_off() -> None:
    assert of_kind(children(minimal_doc(networkPolicy={"enabled": False})), "NetworkPolicy") == []


# ------------------------------------------------------------------------------ API keys


def test_no_api_keys_keeps_the_stock_ingress() -> None:
    items = children(minimal_doc())
    serve = yaml.safe_load(items[0]["spec"]["serveConfigV2"])
    assert "ingress_cls_config" not in serve["applications"][0]["args"]
    assert of_kind(items, "ConfigMap") == []
    assert all("PYTHONPATH" not in json.dumps(p) for p in pod_specs(items))


def test_api_keys_switch_to_the_key_checking_ingress() -> None:
    doc = minimal_doc(serving={"apiKeysSecret": "openai-keys"})
    items = children(doc)
    args = yaml.safe_load(items[0]["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert args["ingress_cls_config"] == {
        "ingress_cls": INGRESS_CLASS,
        "ingress_extra_kwargs": {"api_keys_dir": API_KEYS_DIR},
    }
    (configmap,) = of_kind(items, "ConfigMap")
    assert owned(configmap, doc)
    assert configmap["data"] == {"k2think_api_key_ingress.py": INGRESS_FILE.read_text()}
    # The ingress sizing and placement of #15 (ingress.py) stay beside the key-checking class:
    # build_openai_app merges ingress_deployment_config over the class's default options, and
    # Serve the override (named after the key-checking class) over that.
    deployment = effective_ingress_options(yaml.safe_load(items[0]["spec"]["serveConfigV2"]))
    (override,) = [
        d
        for d in yaml.safe_load(items[0]["spec"]["serveConfigV2"])["applications"][0]["deployments"]
        if not d["name"].startswith("LLMServer:")
    ]
    assert override["name"] == "ApiKeyOpenAiIngress"
    assert deployment["autoscaling_config"]["max_replicas"] >= 1
    assert deployment["ray_actor_options"]["num_cpus"] == 1
    head, *workers = pod_specs(items)
    for pod in [head, *workers]:
        (container,) = pod["containers"]
        assert {"name": "PYTHONPATH", "value": INGRESS_PYTHONPATH} in container["env"]
        assert any(m["mountPath"] == INGRESS_PYTHONPATH for m in container["volumeMounts"])
    # The keys only where the ingress runs (the head and the ingress CPU group), never on GPU
    # workers.
    keys = {"name": "api-keys", "secret": {"secretName": "openai-keys", "defaultMode": 0o440}}
    groups = cluster(items)["workerGroupSpecs"]
    (ingress_pod,) = [g["template"]["spec"] for g in groups if g["groupName"] == INGRESS_GROUP]
    gpu_workers = [g["template"]["spec"] for g in groups if g["groupName"] != INGRESS_GROUP]
    assert gpu_workers
    assert keys in head["volumes"]
    assert keys in ingress_pod["volumes"]
    assert all(keys not in w["volumes"] for w in gpu_workers)


# ------------------------------------------------------------------------------ determinism


def test_rendering_stays_deterministic() -> None:
    doc = minimal_doc(serving={"apiKeysSecret": "k"}, networkPolicy={"monitoringNamespace": "m"})
    assert render_yaml(children(doc)) == render_yaml(children(doc))


def test_supporting_objects_come_first_in_apply_order() -> None:
    items = children(minimal_doc(serving={"apiKeysSecret": "k"}))
    kinds = [c["kind"] for c in supporting_children(items)]
    assert kinds == ["Secret", "ConfigMap", "NetworkPolicy", "NetworkPolicy"]


# ------------------------------------------------------------------------------ reconcile


async def test_reconcile_creates_supporting_objects_before_the_rayservice() -> None:
    kube = RecordingKube()
    reconciler = DeploymentReconciler(kube)
    doc = with_status(minimal_doc(serving={"apiKeysSecret": "k"}), {})
    first = await reconciler.converge(doc)
    assert first.applied
    assert kube.supporting_writes == [
        ("Secret", "demo-ray-token"),
        ("ConfigMap", "demo-serve-auth"),
        ("NetworkPolicy", "demo-ray-internal"),
        ("NetworkPolicy", "demo-serve"),
    ]
    token = kube.supporting[("Secret", "team-a", "demo-ray-token")]["stringData"]["auth_token"]
    assert len(token) >= 40
    # The token's creation is told (in the Created event of the first pass), never the token.
    (created,) = first.events
    assert "created Secret demo-ray-token with a new Ray token" in created.message
    assert token not in str(first.events)
    # Unchanged: nothing is written again.
    await reconciler.converge(with_status(doc, first.status))
    assert len(kube.supporting_writes) == 4
    # Resync pass: everything applied again (drift repair); the token survives.
    await reconciler.converge(with_status(doc, first.status), None, resync=True)
    assert len(kube.supporting_writes) == 8
    again = kube.supporting[("Secret", "team-a", "demo-ray-token")]["stringData"]["auth_token"]
    assert again == token


async def test_a_refused_supporting_object_holds_the_rayservice_back() -> None:
    kube = RecordingKube()
    kube.refuse_supporting = "secrets is forbidden"
    reconciler = DeploymentReconciler(kube)
    outcome = await reconciler.converge(with_status(minimal_doc(), {}))
    assert not outcome.applied and kube.applies == []
    assert outcome.retry_reason
    degraded = next(c for c in outcome.status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "ApplyRejected"
    assert "secrets is forbidden" in degraded["message"]


def test_the_token_is_never_part_of_the_rendered_hashes() -> None:
    items = children(minimal_doc())
    assert digest(items) == digest(children(minimal_doc()))


# ------------------------------------------------------------------------------ the ingress


def _load_ingress_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """Import the Ray-side module with a stand-in base class.

    The operator's venv has no vLLM, which Ray Serve LLM's ingress module needs; the real class
    is exercised on real Ray by the data-plane suite. Here only the key check runs.
    """
    stub = types.ModuleType("ray.llm._internal.serve.core.ingress.ingress")

    class OpenAiIngress:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

    stub.OpenAiIngress = OpenAiIngress  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, stub.__name__, stub)
    spec = importlib.util.spec_from_file_location("k2t_ingress_under_test", INGRESS_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def _call(app: Any, headers: dict[str, str], method: str = "POST") -> tuple[int, bytes]:
    scope = {
        "type": "http",
        "method": method,
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 5000),
        "root_path": "",
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body


async def test_the_ingress_middleware_checks_keys_and_never_logs_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    module = _load_ingress_module(monkeypatch)
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "team-a").write_text("sk-alpha-0123456789\n")
    (keys / "..data").mkdir()  # what a mounted Secret volume also holds
    key_file = module.KeyFile(str(keys), reload_seconds=0)

    async def ok(request: Any) -> PlainTextResponse:
        return PlainTextResponse("served")

    app = Starlette(routes=[Route("/v1/chat/completions", ok, methods=["POST", "OPTIONS"])])
    app.add_middleware(module.ApiKeyMiddleware, key_file=key_file)

    caplog.set_level(logging.DEBUG)
    status, body = await _call(app, {})
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
    assert (await _call(app, {"Authorization": "Bearer sk-wrong"}))[0] == 401
    assert (await _call(app, {"Authorization": "Basic sk-alpha-0123456789"}))[0] == 401
    assert await _call(app, {"Authorization": "Bearer sk-alpha-0123456789"}) == (200, b"served")
    assert (await _call(app, {}, method="OPTIONS"))[0] == 200  # CORS preflight
    # Rotation: a new key file is picked up, a removed one stops working.
    (keys / "team-a").unlink()
    (keys / "team-b").write_text("sk-beta-9876543210")
    assert (await _call(app, {"Authorization": "Bearer sk-alpha-0123456789"}))[0] == 401
    assert (await _call(app, {"Authorization": "Bearer sk-beta-9876543210"}))[0] == 200
    assert "sk-alpha" not in caplog.text and "sk-beta" not in caplog.text
    assert "key(s) loaded" in caplog.text
