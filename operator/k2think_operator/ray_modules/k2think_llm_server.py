"""Serve LLM's server, reporting its vLLM engine's saturation to Serve's autoscaler.

Rendered as ``LLMConfig.server_cls`` when ``spec.autoscaling.policy.mode`` is ``latencyTarget``
(runs inside the Ray replicas, not the operator). Serve calls a replica's
``record_autoscaling_stats`` every few seconds when the deployment autoscales
(``ray/serve/_private/replica.py``, ``_add_autoscaling_metrics_point_async``) and hands the
values, averaged over ``look_back_period_s``, to the deployment's policy as
``AutoscalingContext.aggregated_metrics`` (``k2think_autoscaling.py`` reads them).

What is reported comes from vLLM's own per-step statistics (``k2think_engine_signals.py``):
the engine class Serve LLM starts is wrapped so that the started engine's stat-logger manager
also feeds this process's ``SIGNALS``.

The class is named ``LLMServer`` on purpose: Serve LLM names the deployment
``<class name>:<model id>`` (``ray/llm/_internal/serve/core/server/builder.py``), so the
deployment, its metrics' labels and dashboards stay the same in both autoscaling modes.

Self-contained (standard library, Ray; vLLM only through the engine object) because the operator
ships it into the Ray pods in a ConfigMap, where the operator's package is not installed. One
replica is one process, so the signals live in one module-level object.
"""

from __future__ import annotations

from typing import Any

# Shipped beside this file (same ConfigMap directory on PYTHONPATH), not a package module.
from k2think_engine_signals import SIGNALS, attach  # type: ignore[import-not-found]
from ray.llm._internal.serve.core.server.llm_server import LLMServer as _ServeLLMServer


def _reporting_engine(base: type) -> type:
    """``base`` (Serve LLM's vLLM engine class) whose started engine reports to ``SIGNALS``."""

    class ReportingEngine(base):  # type: ignore[misc]
        def _start_async_llm_engine(self, *args: Any, **kwargs: Any) -> Any:
            engine_client = super()._start_async_llm_engine(*args, **kwargs)
            attach(engine_client)
            return engine_client

    ReportingEngine.__name__ = ReportingEngine.__qualname__ = f"Reporting{base.__name__}"
    return ReportingEngine


class LLMServer(_ServeLLMServer):
    """Serve LLM's server plus ``record_autoscaling_stats`` (the engine's saturation)."""

    def _get_default_engine_class(self) -> Any:
        return _reporting_engine(super()._get_default_engine_class())

    async def record_autoscaling_stats(self) -> dict[str, float]:
        report: dict[str, float] = SIGNALS.snapshot()
        return report
