"""The operator's own output for the smallest valid K2ThinkDeployment, as zlib's preset
dictionary for the packed copies the indexes keep (``runtime.compact.use_preset_dictionary``).

Rendering is deterministic, so every pack and unpack of a process uses the same bytes (they are
never stored or sent).
"""

from __future__ import annotations

import json
from typing import Any

from k2think_operator.deployment.decide import decide
from k2think_operator.deployment.status import Observation, build_status

#: The smallest valid K2ThinkDeployment: what the operator renders for it is the dictionary.
REFERENCE: dict[str, Any] = {
    "apiVersion": "k2think.dev/v1alpha1",
    "kind": "K2ThinkDeployment",
    "metadata": {"name": "k2think", "namespace": "default", "uid": "reference", "generation": 1},
    "spec": {
        "model": {"preset": "k2-think"},
        "pools": [{"name": "h100", "gpuType": "H100-80GB", "gpusPerNode": 8}],
    },
}


def reference_json() -> bytes:
    """JSON of the K2ThinkDeployment status and the RayService spec the operator writes for
    ``REFERENCE``: with it a RayService's spec of the example packs into ~280 bytes instead of
    ~2,000, a K2ThinkDeployment's status into ~460 instead of ~1,130."""
    decision = decide(REFERENCE)
    status = build_status(Observation(generation=1, plan=decision.plan), {}, "")
    specs = [child.get("spec") for child in decision.children[:1]]
    return json.dumps([status, *specs], separators=(",", ":")).encode("ascii")
