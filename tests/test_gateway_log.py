"""Traefik's access log as the chain suite reads it to explain a failed request."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))

from harness import gateway

ROUTER = "httproute-ns-upg-httproute-gw-ns-upg-gateway-ep-web-0-da2c@kubernetesgateway"
LOG = (
    "\x1b[90m2026-12-07T14:09:40Z\x1b[0m \x1b[32mINF\x1b[0m Starting provider *gateway.Provider\n"
    f'10.244.6.4 - - [07/Dec/2026:14:21:55 +0000] "POST /v1/chat/completions HTTP/1.1" 200 '
    f'15937 "-" "-" 676 "{ROUTER}" "http://10.244.1.1:8000" 8ms\n'
    "a line [with a bracket] that is not a request\n"
    f'10.244.6.4 - - [07/Dec/2026:14:22:01 +0000] "POST /v1/chat/completions HTTP/1.1" 502 '
    f'11 "-" "-" 677 "{ROUTER}" "http://10.244.2.1:8000" 24071ms\n'
)


def test_requests_are_read_with_time_status_backend_and_duration() -> None:
    lines = gateway.parse_access_log(LOG)
    assert [(x.status, x.backend, x.duration_ms) for x in lines] == [
        (200, "http://10.244.1.1:8000", 8),
        (502, "http://10.244.2.1:8000", 24071),
    ]
    assert lines[1].at == datetime(2026, 12, 7, 14, 22, 1, tzinfo=UTC)


def test_a_log_without_requests_gives_none() -> None:
    assert gateway.parse_access_log(LOG.splitlines()[0]) == []
