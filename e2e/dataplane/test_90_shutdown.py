"""Ray shuts down cleanly: SIGTERM to the head (what Kubernetes sends a pod) ends every process it
started -- gcs_server, raylet, dashboard, Serve actors, vLLM engine cores -- within the grace
period, and its ports close."""

from __future__ import annotations

import httpx
import pytest
from dataplane_support import RayHead, ServedApp

pytestmark = [pytest.mark.dataplane, pytest.mark.timeout(600)]


def test_shutdown_leaves_no_stray_processes(served_app: ServedApp, ray_head: RayHead) -> None:
    before = ray_head.session_processes()
    names = {p.comm for p in before}
    assert any("gcs_server" in n for n in names), names
    assert any("raylet" in n for n in names), names

    leftovers = ray_head.stop()
    assert leftovers == [], "stray processes:\n" + "\n".join(str(p) for p in leftovers)
    assert ray_head.proc is not None and ray_head.proc.returncode is not None
    assert ray_head.session_processes() == []
    for url in (ray_head.dashboard_url, ray_head.serve_url):
        with pytest.raises(httpx.TransportError):
            httpx.get(url, timeout=5)
