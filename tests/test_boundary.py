"""The input boundary (#22), offline: what the operator owns cannot be set through a side door,
credentials stay out of the CR, downgrades are loud, validate reads YAML as kubectl does, and
decide never raises (a property-based run over documents generated from the CRD's own schema).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from k2think_operator.api import reasons as r
from k2think_operator.api.downgrades import downgrades
from k2think_operator.api.k8s_rules import (
    affinity_problems,
    child_problems,
    label_value_problem,
    qualified_name_problem,
    resources_problems,
)
from k2think_operator.api.manifest_yaml import ManifestYamlError, load_manifests
from k2think_operator.api.owned import (
    OWNED_ENV,
    PLANNED_ENGINE_ARGS,
    engine_arg_problem,
    normalise_engine_arg,
)
from k2think_operator.api.spec import InvalidSpec, parse_spec
from k2think_operator.cli import check_document, main
from k2think_operator.deployment.cache import CacheView
from k2think_operator.deployment.decide import decide, decision_events
from k2think_operator.plan.planner import plan_deployment
from k2think_operator.render import build_children
from k2think_operator.render.rayservice import ALLOCATE_TIMEOUT_ENV
from tests.conftest import CPU_POOL, TINY_MODEL, minimal_doc

# --- owned names: the render writes nothing the user could also set --------------------------

#: Specs that make the render write every variable it can (ingress module, cache, CPU profile,
#: autoscaling fall-back, GCS fault tolerance with a Redis password).
RENDER_SHAPES: list[dict[str, Any]] = [
    {},
    {"serving": {"apiKeysSecret": "keys"}, "autoscaling": {"minReplicas": 0, "maxReplicas": 3}},
    {"model": TINY_MODEL, "pools": [CPU_POOL]},
    {
        "ray": {
            "gcsFaultTolerance": {
                "redisAddress": "redis:6379",
                "passwordSecret": {"name": "redis", "key": "password"},
            }
        },
        "serving": {"ingress": {"placement": "cpuGroup"}},
    },
    {"model": {"preset": "k2-think", "cacheRef": "weights"}},
]


def _env_names(obj: Any) -> set[str]:
    """Every ``env[].name`` and runtime_env variable anywhere in a rendered object."""
    found: set[str] = set()
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "env" and isinstance(value, list):
                found |= {str(e.get("name")) for e in value if isinstance(e, dict)}
            elif key == "env_vars" and isinstance(value, dict):
                found |= set(value)
            elif key == "serveConfigV2" and isinstance(value, str):
                found |= _env_names(yaml.safe_load(value))
            else:
                found |= _env_names(value)
    elif isinstance(obj, list):
        for item in obj:
            found |= _env_names(item)
    return found


@pytest.mark.parametrize("change", RENDER_SHAPES)
def test_every_variable_the_render_writes_is_owned(change: dict[str, Any]) -> None:
    """Fails when the render starts writing a variable ``api/owned.py`` does not list (the
    user could then set it too, and one of the two values would silently lose)."""
    view = CacheView("weights", "weights-claim", "LLM360--K2-Think/abc", "abc")
    decision = decide(minimal_doc(**change), view if "cacheRef" in json.dumps(change) else None)
    assert decision.problems == (), decision.problems
    written = set().union(*(_env_names(child) for child in decision.children))
    assert written, "the render wrote no variable at all: the walk is broken"
    assert written <= OWNED_ENV, written - OWNED_ENV


def test_owned_names_include_the_side_doors_of_the_issue() -> None:
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "NVIDIA_VISIBLE_DEVICES"):
        assert name in OWNED_ENV
    for name in ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"):
        assert name in OWNED_ENV
    assert {"HF_HUB_OFFLINE", "PYTHONPATH", ALLOCATE_TIMEOUT_ENV} <= OWNED_ENV


@pytest.mark.parametrize(
    ("name", "value", "field", "fragment"),
    [
        ("RAY_AUTH_MODE", "disabled", "name", "spec.ray.auth"),
        ("RAY_AUTH_TOKEN", "abc", "name", "spec.ray.auth"),
        ("CUDA_VISIBLE_DEVICES", "0", "name", "GPU isolation"),
        ("PYTHONPATH", "/x", "name", "may not be overridden"),
        ("HF_TOKEN", "x", "name", "spec.model.credentialsSecret"),
        ("MY_SERVICE_PASSWORD", "x", "name", "spec.model.credentialsSecret"),
        ("NOTE", "hf_" + "A" * 34, "value", "spec.model.credentialsSecret"),
    ],
)
def test_env_side_doors_are_refused_naming_the_field(
    name: str, value: str, field: str, fragment: str
) -> None:
    with pytest.raises(InvalidSpec) as caught:
        parse_spec(minimal_doc(ray={"env": [{"name": name, "value": value}]})["spec"])
    (problem,) = caught.value.problems
    assert problem.field == f"spec.ray.env[0].{field}" and fragment in problem.message


@pytest.mark.parametrize(
    ("key", "canonical"),
    [
        ("--tensor-parallel-size", "tensor_parallel_size"),
        ("tensorParallelSize", "tensor_parallel_size"),
        ("TensorParallelSize", "tensor_parallel_size"),
        ("tensor-parallel-size", "tensor_parallel_size"),
        (" max_model_len\n", "max_model_len"),
        ("max_model_len\n", "max_model_len"),
        ("--Served-Model-Name", "served_model_name"),
    ],
)
def test_owned_engine_args_are_refused_in_every_spelling(key: str, canonical: str) -> None:
    assert normalise_engine_arg(key) == canonical
    problem = engine_arg_problem(key, 1)
    assert problem is not None and PLANNED_ENGINE_ARGS[canonical] in problem


def test_a_trailing_newline_is_not_a_keyword_and_hints_never_name_a_refused_key() -> None:
    problem = engine_arg_problem("enforce_eager\n", True)
    assert problem is not None and "'enforce_eager'" in problem
    assert engine_arg_problem("enforce_eager", True) is None
    for key in ("--enforce-eager", "enforceEager", "enable-chunked-prefill"):
        hint = engine_arg_problem(key, True)
        assert hint is not None
        suggested = hint.split("keyword ")[1].split(",")[0].strip("'")
        assert engine_arg_problem(suggested, True) is None, (key, suggested)


@pytest.mark.parametrize(
    ("key", "value"),
    [("hf_token", "x"), ("token", "x"), ("hf-token", "x"), ("revision_note", "hf_" + "b" * 34)],
)
def test_credentials_in_extra_args_are_refused_naming_the_secret_field(
    key: str, value: str
) -> None:
    problem = engine_arg_problem(key, value)
    assert problem is not None and "spec.model.credentialsSecret" in problem


def test_the_default_ray_token_secret_cannot_be_the_api_key_secret() -> None:
    decision = decide(minimal_doc(serving={"apiKeysSecret": "demo-ray-token"}))
    assert decision.children == ()
    assert any(p.startswith("spec.serving.apiKeysSecret: ") for p in decision.problems)


# --- downgrades are loud ---------------------------------------------------------------------


def test_downgrades_are_events_a_condition_and_a_validate_warning(tmp_path: Path) -> None:
    doc = minimal_doc(
        ray={"auth": {"enabled": False}},
        networkPolicy={"enabled": False},
        engine={"extraArgs": {"trust_remote_code": True}},
    )
    decision = decide(doc)
    assert len(decision.downgrades) == 3 and decision.children
    events = decision_events(decision, {}, None)
    reasons = {e.reason for e in events if e.warning}
    assert reasons == {r.EVENT_RAY_AUTH_DISABLED, r.EVENT_SECURITY_DOWNGRADED}
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump(doc))
    out, err = io.StringIO(), io.StringIO()
    assert main(["validate", "-f", str(path)], out, err) == 0
    assert err.getvalue().count("warning: ") == 3
    assert downgrades(parse_spec(minimal_doc()["spec"])) == []


# --- one reading of the input ----------------------------------------------------------------


def test_yaml_is_read_as_kubectl_reads_it() -> None:
    (doc,) = load_manifests("a: 15:00\nb: 1e3\nc: 2024-01-01\nd: yes\ne: 0x10\n")
    assert doc == {"a": "15:00", "b": 1000.0, "c": "2024-01-01", "d": True, "e": 16}
    with pytest.raises(ManifestYamlError, match="already defined"):
        load_manifests("a: 1\na: 2\n")
    with pytest.raises(ManifestYamlError, match="not a JSON number"):
        load_manifests("a: .inf\n")


def test_validate_agrees_with_the_api_server_on_numbers_nulls_and_names() -> None:
    # Nulls the server prunes and integral floats it reads as integers are accepted.
    problems, decision = check_document(
        minimal_doc(replicas=None, model={"preset": "k2-think", "maxModelLen": 32768.0})
    )
    assert problems == [] and decision is not None and decision.plan is not None
    assert decision.plan.max_model_len == 32768
    # A sexagesimal-looking value is a string, which an integer field refuses.
    text = yaml.safe_dump(minimal_doc(replicas=1))
    assert "replicas: 1\n" in text
    (doc,) = load_manifests(text.replace("replicas: 1\n", "replicas: 15:00\n"))
    problems, _ = check_document(doc)
    assert any(p.startswith("spec.replicas: ") for p in problems), problems
    nameless = minimal_doc()
    del nameless["metadata"]["name"]
    problems, _ = check_document(nameless)
    assert problems == ["metadata.name: Required value: name or generateName is required"]


# --- Kubernetes' own rules on what we render -------------------------------------------------


def test_kubernetes_rules() -> None:
    assert label_value_problem("a" * 63) is None and label_value_problem("a" * 64)
    assert label_value_problem("bad value")
    assert qualified_name_problem("example.com/ok") is None
    assert qualified_name_problem("bad key") and qualified_name_problem("Bad.Com/x")
    assert list(resources_problems({"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}, "r"))
    assert list(resources_problems({"requests": {"gpus": "1"}}, "r"))
    assert not list(resources_problems({"requests": {"nvidia.com/gpu": "1"}}, "r"))
    assert list(affinity_problems({"nodeAffinity": "x"}, "a"))
    assert list(
        affinity_problems(
            {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{}]}}, "a"
        )
    )


def test_every_child_of_the_examples_passes_the_kubernetes_rules() -> None:
    spec = parse_spec(minimal_doc()["spec"])
    children = build_children(spec, plan_deployment(spec, "demo"), name="demo", namespace="ns")
    assert [p for c in children for p in child_problems(c)] == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (
            {"pools": [{"name": "h", "gpuType": "H100-80GB", "nodeSelector": {"bad key": "x"}}]},
            "spec.pools[0].nodeSelector",
        ),
        (
            {"pools": [{"name": "h", "gpuType": "H100-80GB", "affinity": {"nodeAffinity": []}}]},
            "spec.pools[0].affinity.nodeAffinity",
        ),
        (
            {"ray": {"head": {"resources": {"requests": {"cpu": "8"}, "limits": {"cpu": "4"}}}}},
            "spec.ray.head.resources.requests.cpu",
        ),
        (
            {"ray": {"head": {"resources": {"requests": {"GPU": "1"}}}}},
            "spec.ray.head.resources.requests",
        ),
    ],
)
def test_what_pod_validation_would_refuse_is_invalid_spec(
    change: dict[str, Any], field: str
) -> None:
    decision = decide(minimal_doc(**change))
    assert decision.children == ()
    assert any(p.startswith(f"{field}") for p in decision.problems), decision.problems


def test_a_cache_of_another_model_is_refused() -> None:
    view = CacheView("weights", "claim", "x/abc", "abc", "hf://someone/other-model")
    decision = decide(minimal_doc(model={"preset": "k2-think", "cacheRef": "weights"}), view)
    assert decision.children == ()
    assert decision.problems and "holds someone/other-model" in decision.problems[0]


# --- decide is total -------------------------------------------------------------------------


def _json_values(depth: int = 3) -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=80),
    )
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.text(max_size=20), children, max_size=4),
        ),
        max_leaves=12,
    )


_FIELDS: dict[str, list[Any]] = {
    "affinity": ["spec", "pools", 0, "affinity"],
    "nodeSelector": ["spec", "pools", 0, "nodeSelector"],
    "gpuMemoryGiB": ["spec", "pools", 0, "gpuMemoryGiB"],
    "memoryPerGpu": ["spec", "pools", 0, "memoryPerGpu"],
    "extraArgs": ["spec", "engine", "extraArgs"],
    "maxModelLen": ["spec", "model", "maxModelLen"],
    "tpGainThreshold": ["spec", "parallelism", "tpGainThreshold"],
    "replicas": ["spec", "replicas"],
    "autoscaling": ["spec", "autoscaling"],
    "env": ["spec", "ray", "env"],
    "tolerations": ["spec", "pools", 0, "tolerations"],
    "head": ["spec", "ray", "head"],
    "architecture": ["spec", "model", "architecture"],
}


def _set(doc: dict[str, Any], path: list[Any], value: Any) -> None:
    node: Any = doc
    for part in path[:-1]:
        node = node[part] if isinstance(part, int) else node.setdefault(part, {})
    node[path[-1]] = value


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(sorted(_FIELDS)), _json_values(), min_size=1, max_size=4))
def test_decide_never_raises_and_renders_deterministically(changes: dict[str, Any]) -> None:
    """Odd values in the fields that reach decide (free-form maps, numbers at the edges of
    what the server admits, wrong shapes): decide returns a Decision, never raises; an accepted
    spec renders the same bytes twice and every child passes the Kubernetes rules."""
    doc = minimal_doc()
    for field, value in changes.items():
        _set(doc, _FIELDS[field], value)
    first = decide(doc)
    assert not any("could not process" in p for p in first.problems), first.problems
    if first.problems:
        return
    second = decide(doc)
    assert json.dumps(first.children, sort_keys=True) == json.dumps(second.children, sort_keys=True)
    assert [p for c in first.children for p in child_problems(c)] == []


# --- specs generated from the CRD's own schema -----------------------------------------------


def _from_schema(schema: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Values the structural schema admits (bounds, enums, patterns, sizes); CEL rules are not
    followed (the offline admission filters them), free-form maps get odd JSON values.
    Home-made: hypothesis-jsonschema does not run with the pinned hypothesis."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if schema.get("x-kubernetes-int-or-string"):
        text = (
            st.from_regex(schema["pattern"], fullmatch=True)
            if "pattern" in schema
            else st.just("auto")
        )
        return st.one_of(st.integers(min_value=-2, max_value=70), text)
    kind = schema.get("type")
    if kind == "object" and "properties" in schema:
        props = schema["properties"]
        required = set(schema.get("required") or [])
        optional = sorted(set(props) - required)
        if depth > 6:
            optional = []
        return st.fixed_dictionaries(
            {k: _from_schema(props[k], depth + 1) for k in sorted(required)},
            optional={k: _from_schema(props[k], depth + 1) for k in optional},
        )
    if kind == "object":
        values = schema.get("additionalProperties")
        if isinstance(values, dict):
            return st.dictionaries(
                st.from_regex(r"[a-z][a-z0-9.\-/]{0,12}", fullmatch=True),
                _from_schema(values, depth + 1),
                max_size=min(int(schema.get("maxProperties", 3)), 3),
            )
        return st.dictionaries(st.text(max_size=12), _json_values(), max_size=3)
    if kind == "array":
        return st.lists(
            _from_schema(schema["items"], depth + 1),
            min_size=int(schema.get("minItems", 0)),
            max_size=min(int(schema.get("maxItems", 3)), 3),
        )
    if kind == "integer":
        return st.integers(
            min_value=int(schema.get("minimum", -(2**31))),
            max_value=int(schema.get("maximum", 2**31)),
        )
    if kind == "number":
        return st.floats(
            min_value=schema.get("minimum"),
            max_value=schema.get("maximum", 1e308),
            exclude_min=bool(schema.get("exclusiveMinimum")),
            exclude_max=bool(schema.get("exclusiveMaximum")),
            allow_nan=False,
            allow_infinity=False,
        )
    if kind == "boolean":
        return st.booleans()
    if kind == "string":
        if "pattern" in schema:
            text = st.from_regex(schema["pattern"], fullmatch=True)
        else:
            text = st.text(min_size=int(schema.get("minLength", 0)), max_size=40)
        return text.filter(lambda s: len(s) <= int(schema.get("maxLength", 10**6)))
    return _json_values()


def _spec_strategy() -> st.SearchStrategy[Any]:
    from k2think_operator.api.crd import openapi_schema

    return _from_schema(openapi_schema()["properties"]["spec"])


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(_spec_strategy())
def test_every_admitted_generated_spec_yields_a_decision(spec: dict[str, Any]) -> None:
    """Specs generated from the CRD's schema: those offline admission (schema and CEL, as the
    API server) admits get a Decision from decide, never an internal error; an accepted one
    renders deterministically and its children pass the Kubernetes rules."""
    from k2think_operator.api.schema_check import schema_errors

    doc = {**minimal_doc(), "spec": spec}
    if schema_errors(doc):
        return
    first = decide(doc)
    assert not any("could not process" in p for p in first.problems), first.problems
    if first.problems:
        return
    second = decide(doc)
    assert json.dumps(first.children, sort_keys=True) == json.dumps(second.children, sort_keys=True)
    assert [p for c in first.children for p in child_problems(c)] == []


def test_the_pods_kubernetes_would_create_are_built_like_kuberays() -> None:
    from k2think_operator.deployment.dryrun import pods_for, rayservice_of

    long_name = "a" * 40
    doc = minimal_doc(serving={"ingress": {"placement": "cpuGroup"}})
    doc["metadata"]["name"] = long_name
    decision = decide(doc)
    rayservice = rayservice_of(decision.children)
    assert rayservice is not None
    pods = pods_for(rayservice)
    groups = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert len(pods) == 1 + len(groups) >= 3
    names = [p["metadata"]["name"] for p in pods]
    assert len(set(names)) == len(names) and all(len(n) <= 63 for n in names)
    assert pods[0]["metadata"]["labels"]["ray.io/node-type"] == "head"
    for pod in pods:
        assert pod["metadata"]["labels"]["ray.io/cluster"] == long_name
        assert pod["spec"]["containers"] and pod["metadata"]["namespace"] == "team-a"
        assert child_problems(pod) == []


def test_a_cache_filled_from_a_path_is_not_judged_by_its_name() -> None:
    view = CacheView("weights", "claim", "x/abc", "abc", "file:///models/tiny-k2")
    decision = decide(minimal_doc(model={"preset": "k2-think", "cacheRef": "weights"}), view)
    assert decision.problems == () and decision.children
