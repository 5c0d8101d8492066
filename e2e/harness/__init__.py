"""Local Kubernetes test ground for k2think-operator's e2e suite and demo.

See docs/testing.md. Entry points: :class:`Cluster` (pytest), ``python -m harness`` (shell).
"""

from .binaries import BinariesMissingError, find_bindir
from .campus import POOL_LABEL, Campus, CampusError, Pool, load_campus, parse_campus
from .cluster import (
    DEFAULT_CAMPUS,
    Cluster,
    HarnessError,
    UnsafeContextError,
    check_context,
    down,
)
from .kubeapi import ApiError, KubeAPI
from .polling import WaitTimeoutError, holds_for, wait_for

__all__ = [
    "DEFAULT_CAMPUS",
    "POOL_LABEL",
    "ApiError",
    "BinariesMissingError",
    "Campus",
    "CampusError",
    "Cluster",
    "HarnessError",
    "KubeAPI",
    "Pool",
    "UnsafeContextError",
    "WaitTimeoutError",
    "check_context",
    "down",
    "find_bindir",
    "holds_for",
    "load_campus",
    "parse_campus",
    "wait_for",
]
