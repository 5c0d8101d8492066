"""What a Serve LLM replica reports to the latency-target autoscaling policy: its vLLM engine's saturation.

The engine's ``StatLoggerManager`` receives each step's ``SchedulerStats`` (KV-cache usage,
running and waiting requests) and ``IterationStats`` (times to first token of the requests that
got one); ``attach`` wraps its ``record`` method so that each recorded step also updates an
``EngineSignals`` (no polling, no second copy of vLLM's bookkeeping). vLLM only records when
``disable_log_stats`` is off (its default, which Serve LLM requires for ``log_engine_metrics``);
without records the replica reports nothing and the policy falls back to ongoing requests. An
engine that has not stepped for ``IDLE_AFTER_S`` is idle: its last step's numbers are stale, so
it reports an empty cache and queue.

Standard library only, apart from the engine object it is handed: shipped into the Ray pods in
the operator's ConfigMap with ``k2think_llm_server.py`` (which needs vLLM to import) and unit
tested without vLLM.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

logger = logging.getLogger("ray.serve")

#: Metric names (k2think_autoscaling.py reads the same).
KV_CACHE_USAGE = "k2t_kv_cache_usage"
WAITING_REQUESTS = "k2t_waiting_requests"
RUNNING_REQUESTS = "k2t_running_requests"
TTFT_SECONDS = "k2t_ttft_seconds"

#: Window of the worst time to first token reported.
TTFT_WINDOW_S = 30.0
#: No engine step for this long: the engine is idle (a busy engine steps many times a second).
IDLE_AFTER_S = 10.0


class EngineSignals:
    """The latest scheduler numbers of this process's engine and its recent first tokens."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._kv = 0.0
        self._running = 0.0
        self._waiting = 0.0
        self._last_step: float | None = None
        self._ttfts: collections.deque[tuple[float, float]] = collections.deque()

    def observe(self, scheduler_stats: Any, iteration_stats: Any) -> None:
        now = self._clock()
        with self._lock:
            if scheduler_stats is not None:
                kv: Any = getattr(scheduler_stats, "kv_cache_usage", None)
                if kv is None:  # vLLM before 0.10 called it gpu_cache_usage
                    kv = getattr(scheduler_stats, "gpu_cache_usage", 0.0)
                self._kv = float(kv)
                self._running = float(getattr(scheduler_stats, "num_running_reqs", 0))
                # vLLM 0.32 splits the queue: waiting, and waiting but deferred (blocked).
                self._waiting = float(getattr(scheduler_stats, "num_waiting_reqs", 0)) + float(
                    getattr(scheduler_stats, "num_skipped_waiting_reqs", 0)
                )
                self._last_step = now
            for ttft in getattr(iteration_stats, "time_to_first_tokens_iter", None) or ():
                self._ttfts.append((now, float(ttft)))

    def snapshot(self) -> dict[str, float]:
        now = self._clock()
        with self._lock:
            while self._ttfts and now - self._ttfts[0][0] > TTFT_WINDOW_S:
                self._ttfts.popleft()
            worst = max((t for _, t in self._ttfts), default=0.0)
            if self._last_step is None:
                return {}
            if now - self._last_step > IDLE_AFTER_S:
                return {
                    KV_CACHE_USAGE: 0.0,
                    RUNNING_REQUESTS: 0.0,
                    WAITING_REQUESTS: 0.0,
                    TTFT_SECONDS: worst,
                }
            return {
                KV_CACHE_USAGE: self._kv,
                RUNNING_REQUESTS: self._running,
                WAITING_REQUESTS: self._waiting,
                TTFT_SECONDS: worst,
            }


SIGNALS = EngineSignals()


def attach(engine_client: Any, signals: EngineSignals = SIGNALS) -> bool:
    """Wrap the engine's stat-logger manager so each recorded step also updates ``signals``."""
    manager = getattr(engine_client, "logger_manager", None)
    if manager is None:
        logger.warning(
            "k2think autoscaling: the vLLM engine records no statistics (disable_log_stats?); "
            "this replica reports no KV-cache signals"
        )
        return False
    record = manager.record

    def record_and_observe(*args: Any, **kwargs: Any) -> Any:
        try:
            signals.observe(kwargs.get("scheduler_stats"), kwargs.get("iteration_stats"))
        except Exception:  # never let a report break the engine's output loop
            logger.exception("k2think autoscaling: could not read engine statistics")
        return record(*args, **kwargs)

    manager.record = record_and_observe
    logger.info("k2think autoscaling: reporting KV-cache usage and queue to Serve")
    return True
