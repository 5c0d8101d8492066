"""Campus files: GPU node pools described by count, turned into KWOK-managed Node objects.

A campus file lists pools, never nodes, so it scales to thousands of nodes::

    name: small
    pools:
      - name: h100              # label k2think.dev/pool=h100, node names kwok-h100-0..3
        count: 4
        gpus: 8                 # capacity of gpuResource (default nvidia.com/gpu)
        gpuProduct: NVIDIA-H100-80GB-HBM3
        gpuMemoryMiB: 81559
        instanceType: p5.48xlarge
        resources: {cpu: "192", memory: 2Ti, pods: "110"}
        zones: [zone-a, zone-b] # optional, round-robin into topology.kubernetes.io/zone
        labels: {}              # optional extra labels
        # taints: default for GPU pools is nvidia.com/gpu=present:NoSchedule; [] for none
      - name: cpu
        count: 2
        resources: {cpu: "32", memory: 128Gi}

See docs/testing.md for every key.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: Label that says which pool a node belongs to (the operator selects pools by it).
POOL_LABEL = "k2think.dev/pool"
#: Label and annotation KWOK is told to manage (``--manage-nodes-with-label-selector``).
KWOK_LABEL = ("type", "kwok")
KWOK_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
GPU_TAINT_KEY = "nvidia.com/gpu"

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_POOL_KEYS = {
    "name",
    "count",
    "gpus",
    "gpuResource",
    "gpuProduct",
    "gpuMemoryMiB",
    "instanceType",
    "resources",
    "zones",
    "labels",
    "annotations",
    "taints",
}
_DEFAULT_RESOURCES = {"cpu": "32", "memory": "128Gi", "pods": "110", "ephemeral-storage": "1Ti"}


class CampusError(ValueError):
    """A campus file that does not follow the format."""


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str

    def to_dict(self) -> dict[str, str]:
        out = {"key": self.key, "effect": self.effect}
        if self.value:
            out["value"] = self.value
        return out


@dataclass(frozen=True)
class Pool:
    name: str
    count: int
    gpus: int = 0
    gpu_resource: str = "nvidia.com/gpu"
    gpu_product: str | None = None
    gpu_memory_mib: int | None = None
    instance_type: str | None = None
    resources: Mapping[str, str] = field(default_factory=lambda: dict(_DEFAULT_RESOURCES))
    zones: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()

    def node_name(self, index: int, prefix: str = "kwok-") -> str:
        return f"{prefix}{self.name}-{index}"

    @property
    def total_gpus(self) -> int:
        return self.gpus * self.count


@dataclass(frozen=True)
class Campus:
    name: str
    pools: tuple[Pool, ...]
    node_prefix: str = "kwok-"

    @property
    def node_count(self) -> int:
        return sum(p.count for p in self.pools)

    def pool(self, name: str) -> Pool:
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)

    def node_names(self) -> list[str]:
        return [p.node_name(i, self.node_prefix) for p in self.pools for i in range(p.count)]

    def nodes(self) -> Iterator[dict[str, Any]]:
        """Node manifests (with status, which the API server accepts on create for nodes)."""
        for pool in self.pools:
            for i in range(pool.count):
                yield node_manifest(pool, i, self.node_prefix)


def node_manifest(pool: Pool, index: int, prefix: str = "kwok-") -> dict[str, Any]:
    name = pool.node_name(index, prefix)
    labels: dict[str, str] = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/role": "agent",
        "node-role.kubernetes.io/agent": "",
        KWOK_LABEL[0]: KWOK_LABEL[1],
        POOL_LABEL: pool.name,
    }
    if pool.instance_type:
        labels["node.kubernetes.io/instance-type"] = pool.instance_type
    if pool.zones:
        labels["topology.kubernetes.io/zone"] = pool.zones[index % len(pool.zones)]
    capacity = dict(_DEFAULT_RESOURCES)
    capacity.update(pool.resources)
    if pool.gpus:
        capacity[pool.gpu_resource] = str(pool.gpus)
        vendor = pool.gpu_resource.split("/", 1)[0]
        labels[f"{vendor}/gpu.present"] = "true"
        labels[f"{vendor}/gpu.count"] = str(pool.gpus)
        if pool.gpu_product:
            labels[f"{vendor}/gpu.product"] = pool.gpu_product
        if pool.gpu_memory_mib:
            labels[f"{vendor}/gpu.memory"] = str(pool.gpu_memory_mib)
    labels.update(pool.labels)
    annotations = {KWOK_ANNOTATION[0]: KWOK_ANNOTATION[1], "node.alpha.kubernetes.io/ttl": "0"}
    annotations.update(pool.annotations)
    node: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {},
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "fake",
            },
            "phase": "Pending",
        },
    }
    if pool.taints:
        node["spec"]["taints"] = [t.to_dict() for t in pool.taints]
    return node


def _str_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise CampusError(f"{where}: expected a mapping, got {type(value).__name__}")
    return {str(k): str(v) for k, v in value.items()}


def _parse_taint(value: Any, where: str) -> Taint:
    if isinstance(value, str):  # "key=value:Effect" like kubectl taint
        m = re.fullmatch(r"([^=:]+)(?:=([^:]*))?:(NoSchedule|PreferNoSchedule|NoExecute)", value)
        if not m:
            raise CampusError(f"{where}: taint {value!r} is not key[=value]:Effect")
        return Taint(m.group(1), m.group(2) or "", m.group(3))
    if isinstance(value, Mapping) and "key" in value and "effect" in value:
        return Taint(str(value["key"]), str(value.get("value", "")), str(value["effect"]))
    raise CampusError(f"{where}: taint must be 'key=value:Effect' or {{key, value, effect}}")


def _parse_pool(raw: Any, where: str) -> Pool:
    if not isinstance(raw, Mapping):
        raise CampusError(f"{where}: a pool is a mapping")
    unknown = set(raw) - _POOL_KEYS
    if unknown:
        raise CampusError(f"{where}: unknown keys {sorted(unknown)}")
    name = str(raw.get("name", ""))
    if not _NAME_RE.match(name):
        raise CampusError(f"{where}: pool name {name!r} must be a DNS label")
    count = raw.get("count")
    if not isinstance(count, int) or count < 0:
        raise CampusError(f"{where}: count must be a non-negative integer")
    gpus = raw.get("gpus", 0)
    if not isinstance(gpus, int) or gpus < 0:
        raise CampusError(f"{where}: gpus must be a non-negative integer")
    gpu_resource = str(raw.get("gpuResource", "nvidia.com/gpu"))
    if "taints" in raw:
        taints_raw = raw["taints"] or []
        if not isinstance(taints_raw, list):
            raise CampusError(f"{where}: taints must be a list")
        taints = tuple(_parse_taint(t, f"{where}.taints") for t in taints_raw)
    elif gpus:
        taints = (Taint(gpu_resource, "present", "NoSchedule"),)
    else:
        taints = ()
    zones = raw.get("zones") or []
    if not isinstance(zones, list):
        raise CampusError(f"{where}: zones must be a list")
    mem = raw.get("gpuMemoryMiB")
    return Pool(
        name=name,
        count=count,
        gpus=gpus,
        gpu_resource=gpu_resource,
        gpu_product=str(raw["gpuProduct"]) if raw.get("gpuProduct") else None,
        gpu_memory_mib=int(mem) if mem is not None else None,
        instance_type=str(raw["instanceType"]) if raw.get("instanceType") else None,
        resources={**_DEFAULT_RESOURCES, **_str_map(raw.get("resources"), f"{where}.resources")},
        zones=tuple(str(z) for z in zones),
        labels=_str_map(raw.get("labels"), f"{where}.labels"),
        annotations=_str_map(raw.get("annotations"), f"{where}.annotations"),
        taints=taints,
    )


def parse_campus(data: Any, *, source: str = "<campus>") -> Campus:
    if not isinstance(data, Mapping):
        raise CampusError(f"{source}: top level must be a mapping")
    unknown = set(data) - {"name", "nodePrefix", "pools"}
    if unknown:
        raise CampusError(f"{source}: unknown keys {sorted(unknown)}")
    pools_raw = data.get("pools")
    if not isinstance(pools_raw, list) or not pools_raw:
        raise CampusError(f"{source}: 'pools' must be a non-empty list")
    pools = tuple(_parse_pool(p, f"{source}: pools[{i}]") for i, p in enumerate(pools_raw))
    names = [p.name for p in pools]
    if len(set(names)) != len(names):
        raise CampusError(f"{source}: pool names must be unique, got {names}")
    return Campus(
        name=str(data.get("name", Path(source).stem)),
        pools=pools,
        node_prefix=str(data.get("nodePrefix", "kwok-")),
    )


def load_campus(path: str | Path) -> Campus:
    p = Path(path)
    with p.open() as f:
        return parse_campus(yaml.safe_load(f), source=str(p))
