"""Failures below HTTP are retries, not crashes: an API server that does not answer, and calls
kopf still makes for a few seconds after its cleanup closed our client.

No API server is involved: the port below has nobody listening, which is exactly the case.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest

from k2think_operator.api.coordinates import K2THINK, RAYSERVICE
from k2think_operator.deployment.cluster import ClusterApi
from k2think_operator.runtime.credentials import Credentials
from k2think_operator.runtime.kube import Kube, RestClient, TransientApiError, build_path


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def kube() -> AsyncIterator[Kube]:
    server = Credentials(server=f"https://127.0.0.1:{_closed_port()}")
    facade = Kube(RestClient(server), "k2think-operator")
    yield facade
    await facade.close()


async def test_an_unreachable_api_server_is_a_transient_error(kube: Kube) -> None:
    with pytest.raises(TransientApiError, match="no answer from the API server"):
        await kube.get(RAYSERVICE, "ns", "k2think")
    with pytest.raises(TransientApiError, match="K2ThinkDeployment status"):
        await kube.patch_status(K2THINK, "ns", "k2think", {"phase": "Pending"})
    with pytest.raises(TransientApiError, match="K2ThinkDeployment list"):
        await ClusterApi(kube).list_deployments(())


async def test_calls_after_close_are_transient_not_session_errors(kube: Kube) -> None:
    await kube.close()
    with pytest.raises(TransientApiError, match="the operator is stopping"):
        await ClusterApi(kube).get_rayservice("ns", "k2think")
    with pytest.raises(TransientApiError, match="the operator is stopping"):
        await kube.apply(
            RAYSERVICE,
            {
                "apiVersion": "ray.io/v1",
                "kind": "RayService",
                "metadata": {"name": "k2think", "namespace": "ns"},
            },
        )


def test_rest_paths_of_core_and_group_apis() -> None:
    from k2think_operator.api.coordinates import PODS

    assert build_path(PODS, "ns") == "/api/v1/namespaces/ns/pods"
    assert build_path(K2THINK) == "/apis/k2think.dev/v1alpha1/k2thinkdeployments"
    assert (
        build_path(K2THINK, "ns", "x", "status")
        == "/apis/k2think.dev/v1alpha1/namespaces/ns/k2thinkdeployments/x/status"
    )
