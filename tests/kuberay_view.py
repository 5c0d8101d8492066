"""KubeRay's translation of Ray Serve's REST status into a RayService status, for tests.

KubeRay polls ``GET /api/serve/applications/`` on the head and copies, per application, the
status and message plus each deployment's status and message into
``status.activeServiceStatus.applicationStatuses``; it sets the RayService ``Ready`` condition
once the app serves (KubeRay: serve endpoints behind a RUNNING app). The operator reads only
that RayService, so feeding real Serve answers through this mapping exercises the operator's
status logic on what Ray really reports.
"""

from __future__ import annotations

from typing import Any


def rayservice_from_serve(serve: dict[str, Any], cluster: str = "tiny-abcde") -> dict[str, Any]:
    apps = serve.get("applications") or {}
    statuses: dict[str, Any] = {}
    for name, app in apps.items():
        statuses[name] = {
            "status": app.get("status"),
            "message": app.get("message", ""),
            "serveDeploymentStatuses": {
                dep_name: {"status": dep.get("status"), "message": dep.get("message", "")}
                for dep_name, dep in (app.get("deployments") or {}).items()
            },
        }
    running = any(s["status"] == "RUNNING" for s in statuses.values())
    status: dict[str, Any] = {
        "conditions": [
            {
                "type": "Ready",
                "status": "True" if running else "False",
                "reason": "NonZeroServeEndpoints" if running else "Initializing",
                "message": "",
            }
        ]
    }
    if statuses:
        status["activeServiceStatus"] = {"rayClusterName": cluster, "applicationStatuses": statuses}
    return {"metadata": {"name": "tiny", "namespace": "default"}, "status": status}
