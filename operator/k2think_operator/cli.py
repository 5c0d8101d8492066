"""``k2think-operator``: run the operator, or render / plan / validate a file offline."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from k2think_operator import __version__
from k2think_operator.api.coordinates import K2THINK, MODELCACHE
from k2think_operator.api.manifest_yaml import ManifestYamlError, load_manifests
from k2think_operator.api.modelcache import parse_cache_spec
from k2think_operator.api.spec import InvalidSpec
from k2think_operator.app.config import OperatorConfig, current_config
from k2think_operator.deployment.cache import CacheView, cache_refs, planned_cache_view
from k2think_operator.deployment.decide import Decision, decide
from k2think_operator.plan.fault_tolerance import gcs_ft_risk
from k2think_operator.plan.planner import Plan
from k2think_operator.render import render_yaml

EXIT_INVALID = 1
EXIT_USAGE = 2


class InputError(Exception):
    """The file could not be read as K2ThinkDeployment YAML."""


def load_all(path: str) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The K2ThinkDeployment documents of a YAML file (``-`` for stdin) and its
    K2ThinkModelCaches by name (what ``spec.model.cacheRef`` resolves to offline)."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as error:
        raise InputError(f"{path}: {error.strerror}") from None
    try:
        # Read as kubectl reads it (api/manifest_yaml.py): what validate checks is what the
        # API server would receive.
        docs = load_manifests(text)
    except ManifestYamlError as error:
        raise InputError(f"{path}: {error}") from None
    found: list[dict[str, Any]] = []
    caches: dict[str, dict[str, Any]] = {}
    for doc in docs:
        if not isinstance(doc, dict):
            raise InputError(f"{path}: a document is not a mapping")
        api_version = str(doc.get("apiVersion", ""))
        if doc.get("kind") == K2THINK.kind and api_version.startswith(K2THINK.group + "/"):
            found.append(doc)
        elif doc.get("kind") == MODELCACHE.kind and api_version.startswith(MODELCACHE.group + "/"):
            caches[str((doc.get("metadata") or {}).get("name"))] = doc
    if not found:
        raise InputError(f"{path}: no {K2THINK.kind} ({K2THINK.group}) document found")
    return found, caches


def load_documents(path: str) -> list[dict[str, Any]]:
    """K2ThinkDeployment documents of a YAML file (``-`` for stdin); others are skipped."""
    return load_all(path)[0]


def _meta(doc: dict[str, Any]) -> tuple[str, str]:
    """The document's name and namespace for messages (``<no name>`` when it has none: that is
    an error of its own, never a made-up name)."""
    meta = doc.get("metadata") or {}
    return str(meta.get("name") or "<no name>"), str(meta.get("namespace") or "default")


def check_document(
    doc: dict[str, Any], caches: dict[str, dict[str, Any]] | None = None
) -> tuple[list[str], Decision | None]:
    """Every problem with one document (CRD schema and CEL, then models and planner), or the
    operator's own decision for it: the same ``decide()`` the running operator calls.

    A deployment with ``spec.model.cacheRef`` (or a draft's cacheRef) is decided as it will run
    once the cache (a K2ThinkModelCache of the same file) has filled its revision."""
    from k2think_operator.api.crd import openapi_schema
    from k2think_operator.api.schema_check import as_stored, schema_errors

    meta = doc.get("metadata") or {}
    if not (meta.get("name") or meta.get("generateName")):
        # The API server refuses it ("name or generateName is required").
        return ["metadata.name: Required value: name or generateName is required"], None
    problems = schema_errors(doc)
    if problems:
        return [str(p) for p in problems], None
    doc = as_stored(doc, openapi_schema())
    name, namespace = _meta(doc)
    body = {**doc, "metadata": {**(doc.get("metadata") or {}), "name": name}}
    body["metadata"]["namespace"] = namespace
    views: list[CacheView | None] = []
    for ref, field in zip(
        cache_refs(doc),
        ("spec.model.cacheRef", "spec.engine.speculativeDecoding.draft.cacheRef"),
        strict=True,
    ):
        view = None
        if ref:
            cache = (caches or {}).get(ref)
            if cache is None:
                return [f"{field}: no {MODELCACHE.kind} named {ref} in the file"], None
            view = planned_cache_view(cache)
            if view is None:
                return [f"{field}: {MODELCACHE.kind} {ref} is invalid"], None
        views.append(view)
    decision = decide(body, views[0], None, views[1])
    if decision.problems:
        return list(decision.problems), None
    return [], decision


def _documents_or_exit(
    path: str, err: TextIO
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]] | None:
    try:
        return load_all(path)
    except InputError as error:
        print(f"error: {error}", file=err)
        return None


def _report(doc: dict[str, Any], problems: list[str], err: TextIO) -> None:
    name, namespace = _meta(doc)
    for problem in problems:
        print(f"{namespace}/{name}: {problem}", file=err)


def cmd_validate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    loaded = _documents_or_exit(args.file, err)
    if loaded is None:
        return EXIT_USAGE
    docs, caches = loaded
    failed = False
    for cache in caches.values():
        try:
            parse_cache_spec(dict(cache.get("spec") or {}))
        except InvalidSpec as error:
            failed = True
            _report(cache, [str(p) for p in error.problems], err)
        else:
            name, namespace = _meta(cache)
            print(f"{namespace}/{name}: valid", file=out)
    for doc in docs:
        problems, decision = check_document(doc, caches)
        if problems:
            failed = True
            _report(doc, problems, err)
        else:
            name, namespace = _meta(doc)
            print(f"{namespace}/{name}: valid", file=out)
            # Allowed, but never silent (api/downgrades.py): the operator posts the same as
            # Warning events and the SecurityDowngraded condition.
            for loosened in decision.downgrades if decision else ():
                print(f"{namespace}/{name}: warning: {loosened}", file=err)
    return EXIT_INVALID if failed else 0


def format_plan_table(name: str, plan: Plan) -> str:
    rows = [
        ("deployment", name),
        ("model", f"{plan.model} ({plan.dtype}, kv cache {plan.kv_cache_dtype})"),
        ("max model len", str(plan.max_model_len)),
        ("tensor x pipeline", f"{plan.tensor_parallel} x {plan.pipeline_parallel}"),
        ("GPUs per replica", str(plan.gpus_per_replica)),
        ("placement", plan.placement_strategy),
        ("replicas", _replica_text(plan)),
        ("target ongoing requests", str(plan.target_ongoing_requests)),
        ("max ongoing requests", str(plan.max_ongoing_requests)),
        ("GCS fault tolerance", "on (Redis)" if plan.gcs_fault_tolerance else "off"),
        ("ingress", _ingress_text(plan)),
    ]
    lines = [f"{k:<24} {v}" for k, v in rows]
    header = (
        f"{'POOL':<12} {'GPU':<14} {'GPUS/POD':>8} {'PODS/REPL':>9} {'WEIGHTS GiB':>11} "
        f"{'KV GiB':>7} {'KV TOKENS':>10} {'SEQS':>5} {'MIN':>4} {'MAX':>5}"
    )
    lines += ["", header]
    for p in plan.pools:
        lines.append(
            f"{p.name:<12} {p.gpu_type:<14} {p.gpus_per_worker_pod:>8} "
            f"{p.worker_pods_per_replica:>9} {p.weights_gib_per_gpu:>11.1f} "
            f"{p.kv_cache_gib_per_gpu:>7.1f} {p.kv_tokens_per_replica:>10} "
            f"{p.concurrent_sequences_per_replica:>5} {p.min_replicas:>4} "
            f"{'-' if p.max_replicas is None else p.max_replicas:>5}"
        )
    lines += ["", plan.explanation]
    if plan.ingress is not None:
        lines.append(plan.ingress.explanation)
    lines += [f"warning: {w}" for w in plan.warnings]
    risk = gcs_ft_risk(plan, current_config().gcs_ft_replica_threshold)
    if risk is not None:
        lines.append(f"warning: {risk}")
    return "\n".join(lines)


def _ingress_text(plan: Plan) -> str:
    ingress = plan.ingress
    if ingress is None:
        return "-"
    return (
        f"{ingress.min_replicas}..{ingress.max_replicas} replicas on {ingress.placement}, "
        f"target {ingress.target_ongoing_requests}"
    )


def _replica_text(plan: Plan) -> str:
    if plan.autoscaling:
        return f"autoscaling {plan.min_replicas}..{plan.max_replicas} (initial {plan.initial_replicas})"
    return f"fixed {plan.initial_replicas}"


def _decided(path: str, err: TextIO) -> tuple[list[Decision], int] | None:
    """The decision for every document of a file; problems go to ``err`` and set the exit code."""
    loaded = _documents_or_exit(path, err)
    if loaded is None:
        return None
    docs, caches = loaded
    decisions: list[Decision] = []
    status = 0
    for doc in docs:
        problems, decision = check_document(doc, caches)
        if decision is None:
            _report(doc, problems, err)
            status = EXIT_INVALID
        else:
            decisions.append(decision)
    return decisions, status


def cmd_plan(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    result = _decided(args.file, err)
    if result is None:
        return EXIT_USAGE
    decisions, status = result
    planned = [(d, d.plan) for d in decisions if d.plan is not None]
    if args.output == "json":
        results = [
            {"name": d.name, "namespace": d.namespace, "plan": plan.to_status()}
            for d, plan in planned
        ]
        if results:
            print(json.dumps(results[0] if len(results) == 1 else results, indent=2), file=out)
        return status
    for d, plan in planned:
        print(format_plan_table(d.name, plan), file=out)
        print(file=out)
    return status


def cmd_render(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    result = _decided(args.file, err)
    if result is None:
        return EXIT_USAGE
    decisions, status = result
    manifests = [child for d in decisions for child in d.children]
    if manifests:
        out.write(render_yaml(manifests))
    return status


def cmd_crd(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from k2think_operator.api.crd import build_cache_crd, build_crd

    out.write(render_yaml([build_cache_crd() if args.cache else build_crd()]))
    return 0


def cmd_run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from k2think_operator.app.main import run_operator

    if args.all_namespaces and args.namespace:
        print("error: --namespace and --all-namespaces are exclusive", file=err)
        return EXIT_USAGE
    if not args.all_namespaces and not args.namespace:
        print("error: give --namespace NS (repeatable) or --all-namespaces", file=err)
        return EXIT_USAGE
    config = OperatorConfig(
        namespaces=tuple(args.namespace or ()),
        all_namespaces=bool(args.all_namespaces),
        health_host=args.health_host,
        health_port=args.health_port,
        metrics_port=args.metrics_port,
        log_format=args.log_format,
        verbose=args.verbose,
        cluster_scan=not args.no_cluster_scan,
        leader_election=bool(args.leader_elect),
        lease_name=args.leader_elect_lease,
        lease_namespace=args.leader_elect_namespace or "",
    )
    return run_operator(config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="k2think-operator",
        description="Serve K2 Think on KubeRay RayService + Ray Serve LLM + vLLM.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator")
    run.add_argument("--namespace", "-n", action="append", help="watch this namespace (repeatable)")
    run.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    run.add_argument("--health-host", default="0.0.0.0", help="liveness endpoint address")
    run.add_argument("--health-port", type=int, default=8080, help="liveness endpoint port")
    run.add_argument(
        "--metrics-port", type=int, default=9090, help="Prometheus /metrics port (0: off)"
    )
    run.add_argument("--log-format", choices=["text", "json"], default="text")
    run.add_argument(
        "--no-cluster-scan",
        action="store_true",
        help="serve only the listed namespaces and the CRDs present at start-up; needs no "
        "cluster-wide list/watch of namespaces and CRDs (least-privilege namespaced mode)",
    )
    run.add_argument(
        "--leader-elect",
        action="store_true",
        help="reconcile only while holding a coordination.k8s.io Lease (run several replicas; "
        "one is active, the others stand by)",
    )
    run.add_argument("--leader-elect-lease", default="k2think-operator", help="name of the Lease")
    run.add_argument(
        "--leader-elect-namespace",
        default=None,
        help="namespace of the Lease (default: POD_NAMESPACE, else the service account's)",
    )
    run.add_argument("--verbose", "-v", action="store_true")
    run.set_defaults(func=cmd_run)

    for name, func, text in (
        ("render", cmd_render, "print every child manifest as multi-document YAML"),
        ("plan", cmd_plan, "print the plan and its explanation"),
        (
            "validate",
            cmd_validate,
            "exit 0 when valid; else print field paths and reasons. Checks what can be checked "
            "without a server: the CRD schema and CEL, the models, the planner, Kubernetes' own "
            "rules on every child; the cluster's admission policies (Pod Security, ...) need "
            "the server: the operator dry-runs the children before applying them",
        ),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("-f", "--file", required=True, help="K2ThinkDeployment YAML ('-': stdin)")
        if name == "plan":
            cmd.add_argument("-o", "--output", choices=["table", "json"], default="table")
        cmd.set_defaults(func=func)

    crd = sub.add_parser("crd", help="print the K2ThinkDeployment CRD")
    crd.add_argument("--cache", action="store_true", help="print the K2ThinkModelCache CRD instead")
    crd.set_defaults(func=cmd_crd)
    return parser


def main(
    argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args, out or sys.stdout, err or sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
