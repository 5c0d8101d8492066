"""Condition types and reasons the operator writes, and event reasons it emits: one place.

Types and reasons follow the Kubernetes API conventions (CamelCase). Users and tools match on
them (``kubectl wait --for=condition=Ready``, the Argo CD health check, alerts), so each is a
contract: rename one only with a release note.
"""

from __future__ import annotations

from typing import Final

# Condition types, in the order status lists them.
READY: Final = "Ready"
PROGRESSING: Final = "Progressing"
DEGRADED: Final = "Degraded"
INVALID_SPEC: Final = "InvalidSpec"
CAPACITY_BLOCKED: Final = "CapacityBlocked"
#: Informational (never changes Ready or phase): a head failure would restart every replica.
GCS_FAULT_TOLERANCE_OFF: Final = "GcsFaultToleranceOff"
#: Only for a deployment queued through Kueue (spec.scheduling.queueName; queueing.py).
ADMITTED: Final = "Admitted"
#: Informational: the spec turns a protection off (api/downgrades.py); a column of kubectl get.
SECURITY_DOWNGRADED: Final = "SecurityDowngraded"
#: Informational (never changes Ready or phase): a full pool's new replicas go to the next pool
#: (docs/autoscaling.md, deployment/spill.py).
SPILL_OVER: Final = "SpillOver"
CONDITION_TYPES: Final = (
    READY,
    PROGRESSING,
    DEGRADED,
    INVALID_SPEC,
    CAPACITY_BLOCKED,
    ADMITTED,
    SPILL_OVER,
    GCS_FAULT_TOLERANCE_OFF,
    SECURITY_DOWNGRADED,
)

# Condition reasons.
SERVING: Final = "Serving"
SUSPENDED: Final = "Suspended"
RAYSERVICE_NOT_FOUND: Final = "RayServiceNotFound"
RAYSERVICE_NOT_READY: Final = "RayServiceNotReady"
APPLICATION_PREFIX: Final = (
    "Application"  # + the Serve status in CamelCase, e.g. ApplicationDeployFailed
)
UPGRADE_IN_PROGRESS: Final = "UpgradeInProgress"
CONVERGED: Final = "Converged"
SPEC_INVALID: Final = INVALID_SPEC  # the InvalidSpec condition's (and Progressing's) reason
SPEC_VALID: Final = "SpecValid"
AS_EXPECTED: Final = "AsExpected"
SCHEDULED: Final = "Scheduled"
UNSCHEDULABLE: Final = "Unschedulable"
#: Degraded/Progressing while KubeRay's CRDs are not installed.
KUBERAY_MISSING: Final = "KubeRayMissing"
#: Degraded/Progressing while the API server refuses our RayService.
APPLY_REJECTED: Final = "ApplyRejected"
#: GcsFaultToleranceOff reasons.
GCS_FT_CONFIGURED: Final = "Configured"
ABOVE_REPLICA_THRESHOLD: Final = "AboveReplicaThreshold"
BELOW_REPLICA_THRESHOLD: Final = "BelowReplicaThreshold"
#: SecurityDowngraded reasons.
DOWNGRADED: Final = "Downgraded"
SECURE_DEFAULTS: Final = "SecureDefaults"
#: Degraded/Progressing while the API server's dry run refuses a child (deployment/dryrun.py):
#: nothing was applied, what runs is untouched.
CHILD_REJECTED: Final = "ChildRejected"
#: SpillOver reasons: a pool is capped at what it holds / no pool is.
POOL_FULL: Final = "PoolFull"
POOLS_OPEN: Final = "PoolsOpen"
#: Reasons of an apply failure that stays visible until the child exists again.
APPLY_FAILURES: Final = (KUBERAY_MISSING, APPLY_REJECTED, CHILD_REJECTED)

# Reasons of the Admitted condition (also status.queue.state, the phase while not admitted, and
# the Events told when Kueue's verdict changes). ADMITTED doubles as the admitted reason.
QUEUED: Final = "Queued"
PREEMPTED: Final = "Preempted"
EVICTED: Final = "Evicted"
DEACTIVATED: Final = "Deactivated"
KUEUE_MISSING: Final = "KueueMissing"

# Event reasons (on the K2ThinkDeployment).
EVENT_PLANNED: Final = "Planned"
EVENT_PLAN_WARNING: Final = "PlanWarning"
EVENT_INVALID_SPEC: Final = INVALID_SPEC
EVENT_NEW_RAY_CLUSTER: Final = "NewRayCluster"
EVENT_CREATED: Final = "Created"
EVENT_UPDATED: Final = "Updated"
EVENT_GCS_FAULT_TOLERANCE_OFF: Final = GCS_FAULT_TOLERANCE_OFF
#: Kueue admitted a deployment again after a preemption, eviction or suspension.
EVENT_RESUMED: Final = "Resumed"
#: Ray token auth switched off by the spec (docs/security.md): a Warning.
EVENT_RAY_AUTH_DISABLED: Final = "RayAuthDisabled"
#: A protection other than token auth turned off (NetworkPolicies, trust_remote_code): a Warning.
EVENT_SECURITY_DOWNGRADED: Final = SECURITY_DOWNGRADED
#: The operator created a deployment's Ray token Secret (the token itself is never told).
EVENT_RAY_TOKEN_CREATED: Final = "RayTokenCreated"
#: A full pool's worker group was capped on the live RayCluster / the cap was lifted.
EVENT_SPILLED_OVER: Final = "SpilledOver"
EVENT_SPILL_LIFTED: Final = "SpillLifted"
#: Events told once per message per object (the rest are told each time they happen).
ANNOUNCED_ONCE: Final = (
    EVENT_PLANNED,
    EVENT_PLAN_WARNING,
    EVENT_INVALID_SPEC,
    EVENT_RAY_AUTH_DISABLED,
    EVENT_SECURITY_DOWNGRADED,
    EVENT_GCS_FAULT_TOLERANCE_OFF,
)

# The model cache (K2ThinkModelCache) and the gate it puts on deployments that use it.
#: Condition type on a K2ThinkModelCache, and on a K2ThinkDeployment with spec.model.cacheRef.
CACHE_READY: Final = "CacheReady"
CLAIM_PENDING: Final = "ClaimPending"
CACHE_DOWNLOADING: Final = "Downloading"
DOWNLOAD_FAILED: Final = "DownloadFailed"
VERIFY_FAILED: Final = "VerifyFailed"
#: CacheReady's reason when the revision is complete and verified (and cachefill's report).
CACHE_FILLED: Final = "Ready"
#: On a deployment: the cache it names has no ready revision yet (or does not exist).
CACHE_NOT_READY: Final = "CacheNotReady"
EVENT_FILL_STARTED: Final = "FillStarted"
EVENT_CACHE_READY: Final = "CacheReady"

# upgradeStrategy NewClusterWithIncrementalUpgrade (deployment/upgrade.py).
#: Condition type, only on a deployment with that strategy: True when the operator is told
#: (K2T_KUBERAY_INCREMENTAL_UPGRADE) that KubeRay's RayServiceIncrementalUpgrade gate is off.
INCREMENTAL_UPGRADE_UNAVAILABLE: Final = "IncrementalUpgradeUnavailable"
KUBERAY_FEATURE_GATE_OFF: Final = "KubeRayFeatureGateOff"
KUBERAY_FEATURE_GATE_ON: Final = "KubeRayFeatureGateOn"
