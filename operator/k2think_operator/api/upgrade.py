"""``spec.incrementalUpgrade``: KubeRay's ``clusterUpgradeOptions`` for
``upgradeStrategy: NewClusterWithIncrementalUpgrade``.

KubeRay v1.6.2 refuses that strategy without these options ("ClusterUpgradeOptions are required
for NewClusterWithIncrementalUpgrade", ``controllers/ray/utils/validation.go``,
``ValidateClusterUpgradeOptions``) once its ``RayServiceIncrementalUpgrade`` feature gate is on;
with the gate off (KubeRay 1.6's default) it ignores the strategy and upgrades nothing. The new
Ray cluster then grows in steps of ``maxSurgePercent`` of the serving capacity, traffic moves to
it through a Gateway API HTTPRoute in steps of ``stepSizePercent`` every ``intervalSeconds``,
and the old cluster shrinks: the fleet never needs its GPUs twice.
"""

from __future__ import annotations

from typing import Final

from pydantic import Field

from k2think_operator.api.base import _Model

#: The ``upgradeStrategy`` value (KubeRay's) that these options go with.
INCREMENTAL_UPGRADE: Final = "NewClusterWithIncrementalUpgrade"
#: Gateway API GatewayClass names are object names (DNS subdomains).
GATEWAY_CLASS_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class IncrementalUpgradeSpec(_Model):
    """How KubeRay moves serving to a new Ray cluster step by step (clusterUpgradeOptions)."""

    gateway_class_name: str = Field(
        pattern=GATEWAY_CLASS_PATTERN,
        max_length=253,
        description="GatewayClass of the Gateway API implementation installed in the cluster; "
        "KubeRay creates a Gateway of this class and an HTTPRoute whose weights move traffic "
        "from the old Ray cluster to the new one.",
    )
    max_surge_percent: int = Field(
        default=25,
        ge=0,
        le=100,
        description="How much serving capacity (Serve's target_capacity, in percent of the "
        "fleet) the new cluster may add before traffic moves to it; the GPUs in use stay "
        "within about (100 + maxSurgePercent)% of the fleet. KubeRay's own default is 100 "
        "(the GPUs twice).",
    )
    step_size_percent: int = Field(
        default=25,
        ge=0,
        le=100,
        description="Share of the traffic moved to the new cluster at each step.",
    )
    interval_seconds: int = Field(
        default=60,
        ge=1,
        le=86400,
        description="Seconds between two traffic steps.",
    )

    def cluster_upgrade_options(self) -> dict[str, int | str]:
        """KubeRay's ``RayServiceUpgradeStrategy.clusterUpgradeOptions``."""
        return {
            "gatewayClassName": self.gateway_class_name,
            "intervalSeconds": self.interval_seconds,
            "maxSurgePercent": self.max_surge_percent,
            "stepSizePercent": self.step_size_percent,
        }
