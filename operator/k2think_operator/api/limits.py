"""Limits the K2ThinkDeployment's name must meet because of the children it ends up in.

The CR itself may be named like any namespaced object (a DNS-1123 subdomain of up to 253
characters, dots allowed), but its name becomes the RayService's name, the
``app.kubernetes.io/instance`` label value, and the prefix of the RayCluster KubeRay derives
(``<name>-xxxxx``). KubeRay v1.6.2 refuses a RayService name longer than 47 characters
(``MaxRayServiceNameLength = MaxRayClusterNameLength - 6`` in
``ray-operator/controllers/ray/utils/constant.go``; ``ValidateRayServiceMetadata``) and a
RayCluster name that is not a DNS-1035 label (``ValidateRayClusterMetadata``, validation.go):
lowercase letters, digits and '-', starting with a letter. Such a deployment would be accepted,
rendered, applied — and then never served, with the reason buried in KubeRay's log. So the
operator refuses it up front (``InvalidSpec``) and ``validate`` does too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from k2think_operator.api.spec import SpecError

#: KubeRay v1.6.2 MaxRayServiceNameLength.
MAX_NAME_LENGTH = 47
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def name_problems(metadata: Mapping[str, Any]) -> list[SpecError]:
    """Why ``metadata.name`` cannot name the children, as SpecErrors (empty: fine)."""
    name = str(metadata.get("name") or "")
    problems: list[SpecError] = []
    if len(name) > MAX_NAME_LENGTH:
        problems.append(
            SpecError(
                "metadata.name",
                f"{len(name)} characters; the RayService takes this name and KubeRay allows at "
                f"most {MAX_NAME_LENGTH}",
            )
        )
    if name and not DNS_1035_LABEL.match(name):
        problems.append(
            SpecError(
                "metadata.name",
                f"{name!r} is not a DNS-1035 label (lowercase letters, digits and '-', starting "
                "with a letter), which KubeRay requires of the Ray cluster it names after it",
            )
        )
    return problems
