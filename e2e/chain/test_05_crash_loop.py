"""A wait on a crash-looping pod fails at once with the cause (issue #20).

A Ray head pod whose container cannot start (here: ``ray start`` with an option Ray does not
have) is restarted by the kubelet stand-in every few seconds, as a kubelet would. The suite's
``wait`` must not sit out its bound and then say "timed out": it stops as soon as the container
has exited quickly three times, naming the container, the restart count, the exit code and the
log's last lines (``harness.crashloop``). It also shows that the pod's private ``/tmp`` leaves
the data-plane venv visible wherever the checkout lives: the error is Ray's own ("no such
option"), not ``ray: command not found``.
"""

from __future__ import annotations

import time

import pytest
from chain_support import POOL_LABEL, Ground, wait

from harness import crashloop, raynodes
from harness.polling import wait_for

NS = "chain-crashloop"
POD = "crashy-head"


def test_a_wait_on_a_crash_looping_head_fails_at_once_with_the_cause(ground: Ground) -> None:
    g = ground
    api = g.cluster.api
    assert api is not None
    g.cluster.kubectl("create", "namespace", NS, check=False)
    api.create(
        f"/api/v1/namespaces/{NS}/pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": POD,
                "namespace": NS,
                "labels": {"ray.io/cluster": "crashy", "ray.io/group": "headgroup"},
            },
            "spec": {
                "nodeSelector": {POOL_LABEL: "head"},
                "automountServiceAccountToken": False,
                "terminationGracePeriodSeconds": 0,
                "restartPolicy": "Always",
                "containers": [
                    {
                        "name": "ray-head",
                        "image": "rayproject/ray:2.60.0",
                        "command": ["/bin/bash", "-c"],
                        "args": ["ray start --head --block --no-such-option"],
                    }
                ],
            },
        },
    )
    log = raynodes.pod_dir(g.state_dir, NS, POD) / "ray-head.log"
    started = time.monotonic()
    try:
        with pytest.raises(crashloop.CrashLoop) as caught:
            wait(
                "the crashy head's Ray runtime started",
                lambda: log.exists() and "Ray runtime started" in log.read_text(errors="replace"),
                timeout=600,
            )
        took = time.monotonic() - started
        message = str(caught.value)
        print(f"\ncrash loop reported after {took:.0f} s:\n{message}")
        # Three runs and two restart back-offs of the stand-in, not the 600 s bound.
        assert took < 3 * raynodes.RESTART_BACKOFF_S + 60, took
        assert "ray-head" in message and f"{NS}/{POD}" in message
        assert "exit code 2" in message, message  # click's usage error
        assert "no such option" in message.lower(), message  # Ray itself ran: the venv is seen
        assert "command not found" not in message
    finally:
        g.cluster.kubectl("delete", "pod", POD, "-n", NS, "--grace-period=0", "--force")
        # Not the suite's ``wait``: this pod's own exits must not abort its cleanup.
        wait_for(
            "the crashy pod gone",
            lambda: not g.cluster.kubectl_json("get", "pods", "-n", NS)["items"],
            timeout=120,
        )
