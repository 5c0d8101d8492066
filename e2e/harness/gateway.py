"""The Gateway API on the test ground: its CRDs, and Traefik as the implementation.

KubeRay's incremental upgrade (``NewClusterWithIncrementalUpgrade``) routes a RayService's
traffic through a Gateway and an HTTPRoute it writes, and moves a cluster's Serve
``target_capacity`` only once the Gateway is ``Accepted`` and ``Programmed`` and the route
``Accepted`` with ``ResolvedRefs`` (``checkIfNeedTargetCapacityUpdate``, KubeRay v1.6.2): without
an implementation writing those conditions, the upgrade never starts. Traefik implements the
Gateway API in one Go binary that builds from the module proxy (``build-binaries.sh``: a patched
copy, see versions.env), so the ground runs the real thing: Traefik in the network namespace of a
pod, watching the API server, writing the statuses, and proxying requests to the Ray clusters'
serve Services with the HTTPRoute's weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from . import processes
from .binaries import BinariesMissingError, component_binary, component_dir

#: KubeRay's flag for the incremental upgrade (alpha in v1.6, off by default).
INCREMENTAL_UPGRADE_GATE = "--feature-gates=RayServiceIncrementalUpgrade=true"
#: The GatewayClass Traefik answers for (its default controller name).
TRAEFIK_CONTROLLER = "traefik.io/gateway-controller"
#: KubeRay's Gateway listens on port 80 (``utils.DefaultGatewayListenerPort``); Traefik attaches
#: a listener to the entry point with the same port.
LISTENER_PORT = 80


def gateway_api_crds() -> list[Path]:
    """The Gateway API's standard CRDs, which ``build-binaries.sh`` copies out of the Go module
    cache (the chain suite's network namespace cannot reach the Go proxy)."""
    where = component_dir("--print-gateway-api") / "crds"
    crds = sorted(where.glob("*.yaml"))
    if not crds:
        raise BinariesMissingError(f"no Gateway API CRDs under {where}; run `make binaries`")
    return crds


def traefik_binary() -> Path:
    """Traefik, built by ``build-binaries.sh`` into its own cache directory."""
    return component_binary("--print-traefik", "traefik")


def gateway_class(name: str) -> dict[str, object]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GatewayClass",
        "metadata": {"name": name},
        "spec": {"controllerName": TRAEFIK_CONTROLLER},
    }


#: Traefik's dynamic configuration beside the Gateway API: a retry of requests whose connection
#: to the backend failed (Traefik's retry middleware stops at the first response, whatever its
#: status, so a request that reached Serve is never sent twice). During an incremental upgrade
#: the backends behind KubeRay's HTTPRoute change under the Gateway (a cluster's Serve proxies
#: stop as its replicas go, its Services' endpoints follow a moment later): without it, a
#: request sent in that moment gets a 502 (seen on the chain ground, 1 of 177).
RETRY_ON_CONNECT_FAILURE = """\
http:
  middlewares:
    retry-connect:
      retry:
        attempts: 3
        initialInterval: 100ms
"""


#: How often Traefik may apply a new configuration from its providers (its default: 2 s, the
#: global ``providersThrottleDuration``; the Gateway API provider has no throttle of its own).
#: KubeRay v1.6.2 lowers the old cluster's Serve ``target_capacity`` to 0 one reconcile (2 s,
#: ``ServiceDefaultRequeueDuration``) after it gives the new cluster the route's last weight: a
#: Gateway that applies the route later keeps sending requests to a cluster whose replicas are
#: stopping, and they fail (two of ~700 in a CI run, a 502 and a 500 after 24 s: Serve's 20 s
#: graceful shutdown of the ingress). docs/serving-path.md tells campuses the same.
PROVIDERS_THROTTLE = "200ms"


def start_traefik(
    state_dir: Path, *, netns: Path, kubeconfig: Path, status_ip: str, name: str = "traefik"
) -> processes.Proc:
    """Traefik's Gateway API provider, in ``netns`` (a pod's), against the API server named in
    ``kubeconfig``; it reports ``status_ip`` as the Gateways' address and retries a request
    whose backend connection failed (``RETRY_ON_CONNECT_FAILURE``, on every route of the
    entry point). Its ping endpoint (8082, inside that namespace) answers once it runs."""
    dynamic = state_dir / f"{name}-dynamic.yaml"
    dynamic.write_text(RETRY_ON_CONNECT_FAILURE)
    argv = [
        str(traefik_binary()),
        f"--entryPoints.web.address=:{LISTENER_PORT}",
        "--entryPoints.web.http.middlewares=retry-connect@file",
        f"--providers.file.filename={dynamic}",
        f"--providers.providersThrottleDuration={PROVIDERS_THROTTLE}",
        # No calls home (version check, usage data): the ground's traffic stays on it.
        "--global.checkNewVersion=false",
        "--global.sendAnonymousUsage=false",
        "--entryPoints.traefik.address=:8082",
        "--ping=true",
        "--providers.kubernetesGateway=true",
        f"--providers.kubernetesGateway.statusAddress.ip={status_ip}",
        "--log.level=INFO",
        "--accesslog=true",
    ]
    env = {"KUBECONFIG": str(kubeconfig)}
    return processes.start(name, argv, state_dir, env=env, netns=netns)


@dataclass(frozen=True)
class AccessLine:
    """One request in Traefik's access log (Common Log Format plus Traefik's fields)."""

    at: datetime
    status: int
    backend: str
    duration_ms: int


_ACCESS = re.compile(
    r'\[(?P<at>[^\]]+)\] "[^"]*" (?P<status>\d{3}) \S+ "[^"]*" "[^"]*" \d+ '
    r'"[^"]*" "(?P<backend>[^"]*)" (?P<ms>\d+)ms'
)


def parse_access_log(text: str) -> list[AccessLine]:
    """Traefik's access log lines in ``text`` (its other log lines are skipped): when each
    request came, its status, the backend Traefik sent it to and how long it took. What a failed
    request through the Gateway is explained with (which cluster's pod answered, and when)."""
    found = []
    for line in text.splitlines():
        match = _ACCESS.search(line)
        if match is None:
            continue
        found.append(
            AccessLine(
                datetime.strptime(match["at"], "%d/%b/%Y:%H:%M:%S %z"),
                int(match["status"]),
                match["backend"],
                int(match["ms"]),
            )
        )
    return found
