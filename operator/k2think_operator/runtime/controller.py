"""One controller: a work queue of keys and a few workers running ``reconcile(key)``.

The contract between a controller and this runtime is controller-runtime's:
``reconcile(key) -> Result``. It reads the object's latest state itself (from the indexes the
watches keep), makes it so, and returns ``Result(requeue_after=...)`` to be looked at again at a
time (a grace period ending, a queue to poll), or raises: any exception sends the key back with
per-key exponential backoff (``RetryLater`` for the expected ones: logged without a traceback).
Watches only enqueue keys (``enqueue``). Because the queue hands a key to one worker at a time
and merges a burst of events for it into one reconcile, a controller needs no lock and no timer
of its own; because it holds keys, not bodies, a burst of a thousand objects costs a thousand
keys while ``workers`` reconciles run (docs/benchmarks.md, "Memory").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from prometheus_client import Counter, Gauge

from k2think_operator.runtime.workqueue import Backoff, ShutDown, WorkQueue

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

QUEUE_DEPTH = Gauge(
    "k2think_workqueue_depth", "Keys waiting for a worker, per controller.", ["controller"]
)
QUEUE_RETRIES = Counter(
    "k2think_workqueue_retries_total",
    "Reconciles that failed and were queued again with backoff, per controller.",
    ["controller"],
)


@dataclass(frozen=True)
class Result:
    """What a reconcile asks of the runtime: nothing, or to look again after a delay."""

    requeue_after: float | None = None

    @staticmethod
    def earliest(*delays: float | None) -> Result:
        """Look again at the earliest of several times (None: not needed)."""
        wanted = [d for d in delays if d is not None]
        return Result(min(wanted) if wanted else None)


class RetryLater(Exception):
    """An expected failure (the API server busy, a dependency missing): retried with backoff,
    logged as one line."""


Reconcile = Callable[[K], Awaitable[Result]]


class Controller(Generic[K]):
    """Runs ``reconcile`` for queued keys on ``workers`` workers (module docstring)."""

    def __init__(
        self,
        name: str,
        reconcile: Reconcile[K],
        *,
        workers: int = 16,
        backoff: Backoff | None = None,
    ) -> None:
        self.name = name
        self._reconcile = reconcile
        self.workers = max(1, workers)
        self.queue: WorkQueue[K] = WorkQueue(backoff)
        self._tasks: list[asyncio.Task[None]] = []
        self._busy = 0
        #: When (monotonic) a reconcile last finished.
        self._last_done = float("-inf")
        self._changed = asyncio.Event()
        self.depth = QUEUE_DEPTH.labels(name)
        self.retries = QUEUE_RETRIES.labels(name)

    def enqueue(self, key: K) -> None:
        """Reconcile ``key`` soon (once, however often it is asked while it waits)."""
        self.queue.add(key)
        self.depth.set(len(self.queue))

    def enqueue_after(self, key: K, delay: float) -> None:
        self.queue.add_after(key, delay)

    def forget(self, key: K) -> None:
        """The object is gone: drop its timer, backoff and place in the queue."""
        self.queue.discard(key)

    def start(self) -> None:
        """Start the workers (on the running loop)."""
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._work(), name=f"{self.name} worker {i}")
            for i in range(self.workers)
        ]

    async def stop(self) -> None:
        """Stop taking keys; reconciles in progress are cancelled (everything is reconciled
        again from the next listing: reconciles are idempotent)."""
        self.queue.shut_down()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def _has_work(self) -> bool:
        """A key is queued or being reconciled (armed timers do not count)."""
        return len(self.queue) > 0 or self._busy > 0

    def busy(self, within: float = 0.0) -> bool:
        """Work while the workers run (:meth:`_has_work`; stopped, nothing will run it), or a
        reconcile that finished less than ``within`` seconds ago: in a burst the queue empties
        between two inputs for a few milliseconds at a time, which is not a pause."""
        if not self._tasks:
            return False
        return self._has_work() or time.monotonic() - self._last_done < within

    async def settle(self) -> None:
        """Wait until no key is queued or being reconciled (timers may still be armed)."""
        while self._has_work():
            self._changed.clear()
            await self._changed.wait()

    async def _work(self) -> None:
        while True:
            try:
                key = await self.queue.get()
            except ShutDown:
                return
            self._busy += 1
            self.depth.set(len(self.queue))
            try:
                await self._process(key)
            finally:
                self.queue.done(key)
                self._busy -= 1
                self._last_done = time.monotonic()
                self._changed.set()

    async def _process(self, key: K) -> None:
        try:
            result = await self._reconcile(key)
        except asyncio.CancelledError:
            raise
        except RetryLater as error:
            delay = self.queue.add_rate_limited(key)
            self.retries.inc()
            log.info("%s: %s: %s; again in %.0f s", self.name, key, error, delay)
        except Exception:
            delay = self.queue.add_rate_limited(key)
            self.retries.inc()
            log.exception("%s: reconcile of %s failed; again in %.0f s", self.name, key, delay)
        else:
            self.queue.forget(key)
            if result.requeue_after is not None:
                self.queue.add_after(key, result.requeue_after)
