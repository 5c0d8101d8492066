"""Kubernetes' own validation of the objects we render, said before we apply them.

The API server validates a RayService's CRD schema only; the Pods KubeRay creates from it are
validated when KubeRay creates them, long after the user's ``kubectl apply`` succeeded: a label
value of 64 characters, a nodeSelector key with a space, ``cpu: 2`` requested with a limit of 1,
a wrong-shaped affinity are then a KubeRay event nobody reads. These pure functions apply the
same rules (``k8s.io/apimachinery/pkg/util/validation``, ``pkg/apis/core/validation``: label
keys and values, DNS names, resource names, requests within limits, ports, the Affinity shape)
to the spec's free-form maps and to every rendered child, so ``validate`` and the operator's
``InvalidSpec`` say it at once with the field to edit. The server-side dry run of the children
(``deployment/dryrun.py``) then catches what only a server knows (admission policies).

Home-made rather than a bundle of Kubernetes' JSON schemas (``kubernetes-validate``): those
carry types, not these rules (lengths, label syntax, request <= limit), and would add every
Kubernetes version's schemas to the operator's image for the one Affinity shape we need.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

LABEL_VALUE_MAX = 63
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?\Z")
_NAME_PART = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?\Z")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
_QUANTITY = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?\Z")
_FACTORS = {
    None: Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
NODE_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt")
LABEL_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def qualified_name_problem(key: str) -> str | None:
    """Why ``key`` is not a label/annotation key (``IsQualifiedName``), or None."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return f"{key!r}: the prefix before '/' must be a DNS subdomain (e.g. example.com/name)"
    if not name or len(name) > 63 or not _NAME_PART.match(name):
        return (
            f"{key!r} is not a valid key: at most 63 characters, alphanumerics, '-', '_' or '.', "
            "starting and ending with an alphanumeric (optionally prefixed example.com/)"
        )
    return None


def label_value_problem(value: object) -> str | None:
    """Why ``value`` is not a label value (``IsValidLabelValue``), or None."""
    if not isinstance(value, str):
        return f"{value!r} is not a string"
    if len(value) > LABEL_VALUE_MAX:
        return f"{value[:20]!r}... is {len(value)} characters; a label value has at most 63"
    if not _LABEL_VALUE.match(value):
        return (
            f"{value!r} is not a valid label value: alphanumerics, '-', '_' or '.', starting "
            "and ending with an alphanumeric"
        )
    return None


def quantity(value: object) -> Decimal | None:
    """A Kubernetes quantity's value (None when it is not one)."""
    text = (
        str(value) if isinstance(value, int | float | str) and not isinstance(value, bool) else ""
    )
    match = _QUANTITY.match(text)
    if not match:
        return None
    try:
        return Decimal(match.group(1)) * _FACTORS[match.group(2)]
    except InvalidOperation:
        return None


def resource_name_problem(name: str) -> str | None:
    """Why ``name`` is not a resource name (``validateResourceName``: standard names or a
    qualified ``domain/name``), or None."""
    if name in ("cpu", "memory", "ephemeral-storage") or name.startswith("hugepages-"):
        return None
    if "/" not in name:
        return (
            f"{name!r} is not a resource name: use cpu, memory, ephemeral-storage, "
            "hugepages-<size> or an extended resource such as nvidia.com/gpu"
        )
    return qualified_name_problem(name)


def labels_problems(labels: object, path: str) -> Iterator[tuple[str, str]]:
    """Problems of a ``key: value`` label map (also nodeSelector and selectors)."""
    if not isinstance(labels, Mapping):
        yield path, "must be a map of label keys to values"
        return
    for key, value in labels.items():
        problem = qualified_name_problem(str(key))
        if problem:
            yield f"{path}[{key!r}]" if " " in str(key) else f"{path}.{key}", problem
            continue
        problem = label_value_problem(value)
        if problem:
            yield f"{path}.{key}", problem


def resources_problems(resources: object, path: str) -> Iterator[tuple[str, str]]:
    """Resource names, quantities, and every request within its limit."""
    if not isinstance(resources, Mapping):
        return
    parsed: dict[str, dict[str, Decimal]] = {}
    for part in ("requests", "limits"):
        entries = resources.get(part) or {}
        parsed[part] = {}
        for name, value in entries.items():
            problem = resource_name_problem(str(name))
            if problem:
                yield f"{path}.{part}", problem
                continue
            amount = quantity(value)
            if amount is None:
                yield f"{path}.{part}.{name}", f"{value!r} is not a quantity"
                continue
            parsed[part][str(name)] = amount
    for name, request in parsed["requests"].items():
        limit = parsed["limits"].get(name)
        if limit is not None and request > limit:
            yield (
                f"{path}.requests.{name}",
                f"the request ({resources['requests'][name]}) exceeds the limit "
                f"({resources['limits'][name]}); a request must be at most its limit",
            )


def _expressions(value: object, path: str, operators: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    if not isinstance(value, list):
        yield path, "must be a list"
        return
    for index, item in enumerate(value):
        where = f"{path}[{index}]"
        if not isinstance(item, Mapping):
            yield where, "must be an object with key, operator and values"
            continue
        key, operator, values = item.get("key"), item.get("operator"), item.get("values")
        if not isinstance(key, str) or not key:
            yield f"{where}.key", "is required"
        elif problem := qualified_name_problem(key):
            yield f"{where}.key", problem
        if operator not in operators:
            yield f"{where}.operator", f"{operator!r} is not one of {', '.join(operators)}"
            continue
        if values is not None and (
            not isinstance(values, list) or not all(isinstance(v, str) for v in values)
        ):
            yield f"{where}.values", "must be a list of strings"
        elif operator in ("In", "NotIn") and not values:
            yield f"{where}.values", f"operator {operator} needs at least one value"
        elif operator in ("Exists", "DoesNotExist") and values:
            yield f"{where}.values", f"operator {operator} takes no values"
        elif operator in ("Gt", "Lt") and (
            len(values or []) != 1 or not str((values or [""])[0]).lstrip("-").isdigit()
        ):
            yield f"{where}.values", f"operator {operator} needs exactly one integer value"


def _node_term(term: object, path: str) -> Iterator[tuple[str, str]]:
    if not isinstance(term, Mapping):
        yield path, "must be an object (matchExpressions, matchFields)"
        return
    unknown = set(term) - {"matchExpressions", "matchFields"}
    if unknown:
        yield path, f"unknown field(s) {', '.join(sorted(map(str, unknown)))}"
    if "matchExpressions" in term:
        yield from _expressions(
            term["matchExpressions"], f"{path}.matchExpressions", NODE_OPERATORS
        )
    if "matchFields" in term:
        yield from _expressions(term["matchFields"], f"{path}.matchFields", ("In", "NotIn"))


def _weight(item: Mapping[str, Any], path: str) -> Iterator[tuple[str, str]]:
    weight = item.get("weight")
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 100:
        yield f"{path}.weight", f"{weight!r}: a weight is an integer from 1 to 100"


def _selector(selector: object, path: str) -> Iterator[tuple[str, str]]:
    if selector is None:
        return
    if not isinstance(selector, Mapping):
        yield path, "must be a label selector (matchLabels, matchExpressions)"
        return
    if "matchLabels" in selector:
        yield from labels_problems(selector["matchLabels"], f"{path}.matchLabels")
    if "matchExpressions" in selector:
        yield from _expressions(
            selector["matchExpressions"], f"{path}.matchExpressions", LABEL_OPERATORS
        )


def _pod_term(term: object, path: str) -> Iterator[tuple[str, str]]:
    if not isinstance(term, Mapping):
        yield path, "must be a pod affinity term (labelSelector, topologyKey)"
        return
    key = term.get("topologyKey")
    if not isinstance(key, str) or not key:
        yield f"{path}.topologyKey", "is required (e.g. kubernetes.io/hostname)"
    elif problem := qualified_name_problem(key):
        yield f"{path}.topologyKey", problem
    yield from _selector(term.get("labelSelector"), f"{path}.labelSelector")
    yield from _selector(term.get("namespaceSelector"), f"{path}.namespaceSelector")
    namespaces = term.get("namespaces")
    if namespaces is not None and (
        not isinstance(namespaces, list) or not all(isinstance(n, str) for n in namespaces)
    ):
        yield f"{path}.namespaces", "must be a list of namespace names"


def affinity_problems(affinity: object, path: str) -> Iterator[tuple[str, str]]:
    """The shape of a core/v1 Affinity and the rules Pod validation applies to it."""
    if affinity is None:
        return
    if not isinstance(affinity, Mapping):
        yield path, "must be an object (nodeAffinity, podAffinity, podAntiAffinity)"
        return
    unknown = set(affinity) - {"nodeAffinity", "podAffinity", "podAntiAffinity"}
    if unknown:
        yield path, f"unknown field(s) {', '.join(sorted(map(str, unknown)))}"
    node = affinity.get("nodeAffinity")
    if node is not None:
        where = f"{path}.nodeAffinity"
        if not isinstance(node, Mapping):
            yield where, "must be an object"
        else:
            required = node.get("requiredDuringSchedulingIgnoredDuringExecution")
            if required is not None:
                rwhere = f"{where}.requiredDuringSchedulingIgnoredDuringExecution"
                terms = required.get("nodeSelectorTerms") if isinstance(required, Mapping) else None
                if not isinstance(terms, list) or not terms:
                    yield f"{rwhere}.nodeSelectorTerms", "needs at least one term"
                else:
                    for i, term in enumerate(terms):
                        yield from _node_term(term, f"{rwhere}.nodeSelectorTerms[{i}]")
            yield from _preferred(node, where, "preference", _node_term)
    for kind in ("podAffinity", "podAntiAffinity"):
        pod = affinity.get(kind)
        if pod is None:
            continue
        where = f"{path}.{kind}"
        if not isinstance(pod, Mapping):
            yield where, "must be an object"
            continue
        required = pod.get("requiredDuringSchedulingIgnoredDuringExecution")
        if required is not None:
            rwhere = f"{where}.requiredDuringSchedulingIgnoredDuringExecution"
            if not isinstance(required, list):
                yield rwhere, "must be a list"
            else:
                for i, term in enumerate(required):
                    yield from _pod_term(term, f"{rwhere}[{i}]")
        yield from _preferred(pod, where, "podAffinityTerm", _pod_term)


def _pod_spec_problems(pod: Mapping[str, Any], path: str) -> Iterator[tuple[str, str]]:
    yield from labels_problems(pod.get("nodeSelector") or {}, f"{path}.nodeSelector")
    yield from affinity_problems(pod.get("affinity"), f"{path}.affinity")
    for index, container in enumerate(pod.get("containers") or []):
        where = f"{path}.containers[{index}]"
        name = str(container.get("name"))
        if len(name) > 63 or not _DNS_LABEL.match(name):
            yield f"{where}.name", f"{name!r} is not a DNS label"
        yield from resources_problems(container.get("resources"), f"{where}.resources")
        for p_index, port in enumerate(container.get("ports") or []):
            number = port.get("containerPort")
            if not isinstance(number, int) or not 1 <= number <= 65535:
                yield f"{where}.ports[{p_index}]", f"{number!r} is not a port (1-65535)"


def _pod_templates(obj: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every pod template of a rendered child, with its path (RayService: head and groups)."""
    spec = obj.get("spec") or {}
    cluster = spec.get("rayClusterConfig") or {}
    head = (cluster.get("headGroupSpec") or {}).get("template")
    if head:
        yield "spec.rayClusterConfig.headGroupSpec.template", head
    for index, group in enumerate(cluster.get("workerGroupSpecs") or []):
        template = group.get("template")
        if template:
            yield f"spec.rayClusterConfig.workerGroupSpecs[{index}].template", template


def child_problems(child: Mapping[str, Any]) -> list[str]:
    """What the API server (or, for pod templates, the Pod validation KubeRay meets) would
    refuse in one rendered child, as ``<Kind> <name>: <path>: <message>``."""
    meta = child.get("metadata") or {}
    kind, name = str(child.get("kind")), str(meta.get("name"))
    found: list[tuple[str, str]] = []
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        found.append(("metadata.name", f"{name!r} is not a DNS subdomain"))
    found += labels_problems(meta.get("labels") or {}, "metadata.labels")
    for path, template in _pod_templates(child):
        found += labels_problems(
            (template.get("metadata") or {}).get("labels") or {}, f"{path}.metadata.labels"
        )
        found += _pod_spec_problems(template.get("spec") or {}, f"{path}.spec")
    return [f"{kind} {name}: {path}: {message}" for path, message in found]


def _preferred(
    affinity: Mapping[str, Any],
    where: str,
    term_key: str,
    check_term: Callable[[object, str], Iterator[tuple[str, str]]],
) -> Iterator[tuple[str, str]]:
    """The weighted terms of ``preferredDuringSchedulingIgnoredDuringExecution``: node and pod
    affinity share the shape and differ only in the term's key and its checker."""
    preferred = affinity.get("preferredDuringSchedulingIgnoredDuringExecution")
    if preferred is None:
        return
    pwhere = f"{where}.preferredDuringSchedulingIgnoredDuringExecution"
    if not isinstance(preferred, list):
        yield pwhere, "must be a list"
        return
    for i, item in enumerate(preferred):
        if not isinstance(item, Mapping):
            yield f"{pwhere}[{i}]", f"must be an object (weight, {term_key})"
            continue
        yield from _weight(item, f"{pwhere}[{i}]")
        yield from check_term(item.get(term_key), f"{pwhere}[{i}].{term_key}")
