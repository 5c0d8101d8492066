"""A work queue of object keys, with client-go's semantics, on asyncio.

Why not kopf's per-object workers: kopf runs a handler per event, so everything a controller
needs beyond "react to this event" — waiting for a slot, merging a burst of events into one
reconcile, looking again at a time, backing off after a failure — had to be built beside it,
once per controller and once per reason (four timers per deployment, fixed 30 s retries). The
queue below is client-go's ``util/workqueue`` (what controller-runtime and cert-manager build
every controller on), reduced to what the operator uses:

* a key added while it waits is queued once (events merge);
* a key is never handed to two workers at once; added while it is processed, it is handed out
  again when that worker is ``done`` with it (so the latest state is always reconciled);
* ``add_after``: look at a key again at a time, one timer per key, the earliest wins
  (cert-manager's ``ScheduledWorkQueue``);
* ``add_rate_limited``: per-key exponential backoff with a cap
  (``ItemExponentialFailureRateLimiter``), reset by ``forget`` after a success.

It holds keys only: a worker reads the object's latest state when it gets the key.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class ShutDown(Exception):
    """``get`` on a queue that was shut down."""


@dataclass(frozen=True)
class Backoff:
    """Per-key exponential backoff: ``base * 2**failures``, at most ``cap`` seconds."""

    base: float = 1.0
    cap: float = 300.0

    def delay(self, failures: int) -> float:
        """The wait before retry number ``failures + 1`` (``failures`` so far, from 0)."""
        return float(min(self.cap, self.base * 2 ** min(failures, 62)))


class WorkQueue(Generic[K]):
    """Keys waiting to be reconciled (module docstring)."""

    def __init__(self, backoff: Backoff | None = None) -> None:
        self.backoff = backoff or Backoff()
        self._queue: deque[K] = deque()
        #: Keys that must be processed (queued, or re-added while processing).
        self._dirty: set[K] = set()
        self._processing: set[K] = set()
        #: One timer per key: (when, handle), the earliest wins.
        self._timers: dict[K, tuple[float, asyncio.TimerHandle]] = {}
        self._failures: dict[K, int] = {}
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._shutdown = False

    def __len__(self) -> int:
        """Keys waiting to be handed out (not those processing or waiting for a timer)."""
        return len(self._queue)

    @property
    def idle(self) -> bool:
        """Nothing queued, processing or scheduled."""
        return not (self._queue or self._processing or self._timers)

    def add(self, key: K) -> None:
        """Queue ``key`` unless it is queued already; a key being processed is queued again
        when its worker is done."""
        if self._shutdown or key in self._dirty:
            return
        self._dirty.add(key)
        if key in self._processing:
            return
        self._queue.append(key)
        self._notify()

    def add_after(self, key: K, delay: float) -> None:
        """Queue ``key`` after ``delay`` seconds; an earlier timer for it is kept."""
        if self._shutdown:
            return
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        existing = self._timers.get(key)
        if existing is not None:
            if existing[0] <= when:
                return
            existing[1].cancel()
        self._timers[key] = (when, loop.call_at(when, self._fire, key))

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def add_rate_limited(self, key: K) -> float:
        """Queue ``key`` after its backoff (which then doubles); returns the delay."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        delay = self.backoff.delay(failures)
        self.add_after(key, delay)
        return delay

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    def forget(self, key: K) -> None:
        """The key succeeded: its next failure starts the backoff from ``base`` again."""
        self._failures.pop(key, None)

    def discard(self, key: K) -> None:
        """Drop everything about ``key`` (the object is gone): its timer, backoff and place in
        the queue. A worker processing it finishes normally."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer[1].cancel()
        self._failures.pop(key, None)
        if key in self._dirty and key not in self._processing:
            self._dirty.discard(key)
            self._queue.remove(key)
        else:
            self._dirty.discard(key)

    async def get(self) -> K:
        """The next key to process (waits for one); pair with ``done``."""
        while not self._queue:
            if self._shutdown:
                raise ShutDown
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif self._queue:
                    self._notify()  # the wake-up this waiter got goes to another one
                raise
        key = self._queue.popleft()
        self._processing.add(key)
        self._dirty.discard(key)
        return key

    def done(self, key: K) -> None:
        """The worker finished ``key``; queue it again if it was added meanwhile."""
        self._processing.discard(key)
        if key in self._dirty:
            self._queue.append(key)
            self._notify()

    def shut_down(self) -> None:
        """Wake every waiting ``get`` with ``ShutDown``; cancel the timers."""
        self._shutdown = True
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _notify(self) -> None:
        """Wake one waiting ``get``."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
