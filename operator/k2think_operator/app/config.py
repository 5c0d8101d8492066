"""Settings of the operator process, from the command line (and K2T_* environment variables)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from k2think_operator.plan.fault_tolerance import DEFAULT_GCS_FT_REPLICA_THRESHOLD

#: Reconciles at once (``K2T_RECONCILE_CONCURRENCY``: the deployment controller's workers). The API server applies
#: one object in a few ms: 16 requests in flight keep it as busy as a thousand do, without a
#: thousand rendered deployments waiting in memory (docs/benchmarks.md, "Memory").
DEFAULT_RECONCILE_CONCURRENCY = 16


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = ()
    all_namespaces: bool = False
    health_host: str = "0.0.0.0"
    health_port: int = 8080
    metrics_port: int = 9090
    log_format: str = "text"
    verbose: bool = False
    #: Watch namespaces/CRDs appearing at run time (needs list/watch on them cluster-wide).
    cluster_scan: bool = True
    unschedulable_grace_seconds: int = field(
        default_factory=lambda: _env_int("K2T_UNSCHEDULABLE_GRACE_SECONDS", 60)
    )
    #: A pool capped for spill-over (deployment/spill.py) takes new replicas again after this
    #: long, unless it changed before.
    spill_retry_seconds: int = field(
        default_factory=lambda: _env_int("K2T_SPILL_RETRY_SECONDS", 600)
    )
    #: GcsFaultToleranceOff is reported above this many replicas (fault_tolerance.py).
    gcs_ft_replica_threshold: int = field(
        default_factory=lambda: _env_int(
            "K2T_GCS_FT_REPLICA_THRESHOLD", DEFAULT_GCS_FT_REPLICA_THRESHOLD
        )
    )
    #: KubeRay's RayServiceIncrementalUpgrade feature gate is on (``K2T_KUBERAY_INCREMENTAL_UPGRADE``):
    #: the operator cannot read KubeRay's flags, the platform team says (deployment/upgrade.py).
    kuberay_incremental_upgrade: bool = field(
        default_factory=lambda: (
            os.environ.get("K2T_KUBERAY_INCREMENTAL_UPGRADE", "").lower() in ("1", "true", "yes")
        )
    )
    resync_seconds: int = field(default_factory=lambda: _env_int("K2T_RESYNC_SECONDS", 600))
    #: Dry-run the Pods KubeRay will create from a RayService before applying it
    #: (deployment/dryrun.py): Pod validation and the cluster's admission policies then speak
    #: before KubeRay does. Off by default: it needs RBAC create on pods (a dry run is
    #: authorised as the real call), which least privilege does not grant; K2T_DRY_RUN_PODS=1
    #: with the chart's dryRunPods=true turns both on (the RayService is dry-run either way).
    dry_run_pods: bool = field(default_factory=lambda: _env_int("K2T_DRY_RUN_PODS", 0) != 0)
    #: The longest wait between retries of a failing reconcile (per-key exponential backoff from
    #: 1 s); also how often a cache waiting for its claim looks again.
    retry_seconds: int = field(default_factory=lambda: _env_int("K2T_RETRY_SECONDS", 30))
    #: How often a deployment waiting for Kueue is looked at again (queueing.py).
    queue_recheck_seconds: int = field(
        default_factory=lambda: _env_int("K2T_QUEUE_RECHECK_SECONDS", 15)
    )
    watch_timeout_seconds: int = field(default_factory=lambda: _env_int("K2T_WATCH_TIMEOUT", 300))
    #: Concurrent per-object workers; 0 means unbounded (kopf's default). A small bound
    #: serialises a burst of applies: each worker also waits for its own patch to come back.
    worker_limit: int = field(default_factory=lambda: _env_int("K2T_WORKER_LIMIT", 0))
    #: Reconciles running at once (the deployment controller's workers); the others wait, as
    #: keys, before they render.
    reconcile_concurrency: int = field(
        default_factory=lambda: _env_int("K2T_RECONCILE_CONCURRENCY", DEFAULT_RECONCILE_CONCURRENCY)
    )
    #: Leader election (k2think_operator.runtime.leader): only the holder of the Lease reconciles.
    leader_election: bool = False
    lease_name: str = "k2think-operator"
    #: Empty: POD_NAMESPACE, else the service account's namespace.
    lease_namespace: str = ""
    #: Empty: the pod name plus a random suffix.
    lease_identity: str = ""
    #: Whole seconds: the Lease's leaseDurationSeconds is an integer (the elector stores
    #: str(duration) and parses it back with int()).
    lease_duration_seconds: int = field(
        default_factory=lambda: _env_int("K2T_LEASE_DURATION_SECONDS", 15)
    )
    lease_renew_deadline_seconds: int = field(
        default_factory=lambda: _env_int("K2T_LEASE_RENEW_DEADLINE_SECONDS", 10)
    )
    lease_retry_seconds: int = field(default_factory=lambda: _env_int("K2T_LEASE_RETRY_SECONDS", 2))

    @property
    def liveness_endpoint(self) -> str:
        return f"http://{self.health_host}:{self.health_port}/healthz"


_current = OperatorConfig()


def current_config() -> OperatorConfig:
    return _current


def set_config(config: OperatorConfig) -> None:
    global _current
    _current = config
