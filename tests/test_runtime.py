"""The controller runtime (``runtime/workqueue.py``, ``runtime/controller.py``): client-go's
work-queue semantics, which both controllers rely on instead of locks and timers of their own."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, cast

import pytest

from k2think_operator.runtime.controller import Controller, Result, RetryLater
from k2think_operator.runtime.events import Event
from k2think_operator.runtime.kube import ApplyRejected, EventRecorder
from k2think_operator.runtime.workqueue import Backoff, ShutDown, WorkQueue


async def test_a_key_added_while_it_waits_is_processed_once() -> None:
    queue: WorkQueue[str] = WorkQueue()
    for key in ("a", "b", "a", "a"):
        queue.add(key)
    assert len(queue) == 2
    assert [await queue.get(), await queue.get()] == ["a", "b"]


async def test_a_key_added_while_processed_comes_back_after_done_not_before() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    key = await queue.get()
    queue.add("a")  # an event while a worker has it
    assert len(queue) == 0  # never handed to a second worker meanwhile
    queue.done(key)
    assert len(queue) == 1 and await queue.get() == "a"


async def test_add_after_keeps_the_earliest_timer_per_key() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add_after("a", 5.0)
    queue.add_after("a", 0.01)  # earlier: replaces
    queue.add_after("a", 10.0)  # later: ignored
    got = await asyncio.wait_for(queue.get(), timeout=2)
    assert got == "a"
    queue.done(got)
    assert queue.idle


def test_backoff_doubles_per_failure_up_to_its_cap() -> None:
    backoff = Backoff(base=1.0, cap=30.0)
    assert [backoff.delay(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.delay(10_000) == 30


async def test_rate_limited_adds_back_off_per_key_and_forget_resets() -> None:
    queue: WorkQueue[str] = WorkQueue(Backoff(base=0.01, cap=0.04))
    assert [queue.add_rate_limited("a") for _ in range(4)] == [0.01, 0.02, 0.04, 0.04]
    assert queue.add_rate_limited("b") == 0.01  # per key
    queue.forget("a")
    assert queue.failures("a") == 0 and queue.add_rate_limited("a") == 0.01


async def test_discard_drops_the_timer_and_the_queued_key() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    queue.add_after("b", 0.05)
    queue.discard("a")
    queue.discard("b")
    assert queue.idle
    await asyncio.sleep(0.1)
    assert len(queue) == 0


async def test_shut_down_wakes_waiting_workers() -> None:
    queue: WorkQueue[str] = WorkQueue()
    waiter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.shut_down()
    with pytest.raises(ShutDown):
        await waiter


async def test_one_key_never_runs_twice_at_once_and_a_burst_merges() -> None:
    runs: list[int] = []
    running = 0
    gate = asyncio.Event()

    async def reconcile(key: str) -> Result:
        nonlocal running
        running += 1
        assert running == 1
        runs.append(len(runs))
        await gate.wait()
        running -= 1
        return Result()

    controller: Controller[str] = Controller("test", reconcile, workers=4)
    controller.start()
    controller.enqueue("k")
    await asyncio.sleep(0.01)  # the first reconcile runs and waits
    for _ in range(5):
        controller.enqueue("k")  # merged into one more run
    gate.set()
    await asyncio.wait_for(controller.settle(), timeout=2)
    await controller.stop()
    assert runs == [0, 1]


async def test_workers_bound_how_many_keys_run_at_once() -> None:
    in_flight = most = 0
    done: list[int] = []

    async def reconcile(key: int) -> Result:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        done.append(key)
        return Result()

    controller: Controller[int] = Controller("test", reconcile, workers=3)
    controller.start()
    for key in range(12):
        controller.enqueue(key)
    await asyncio.wait_for(controller.settle(), timeout=5)
    await controller.stop()
    assert sorted(done) == list(range(12)) and most == 3


async def test_busy_while_keys_wait_or_run_not_for_timers_nor_after_stop() -> None:
    gate = asyncio.Event()

    async def reconcile(key: str) -> Result:
        await gate.wait()
        return Result(requeue_after=60)

    controller: Controller[str] = Controller("test", reconcile, workers=1)
    controller.enqueue("k")
    assert not controller.busy()  # not started: nothing runs
    controller.start()
    assert controller.busy()  # queued
    await asyncio.sleep(0)
    assert controller.busy()  # running
    gate.set()
    await asyncio.wait_for(controller.settle(), timeout=2)
    assert not controller.busy()  # only its timer is armed
    # A reconcile that just finished: not a pause yet for whoever asks for one of a minute.
    assert controller.busy(within=60) and not controller.busy(within=0)
    controller.enqueue("k")
    await controller.stop()
    assert not controller.busy() and not controller.busy(within=60)


async def test_errors_back_off_and_requeue_after_schedules() -> None:
    attempts: list[float] = []
    loop = asyncio.get_running_loop()
    finished = asyncio.Event()

    async def reconcile(key: str) -> Result:
        attempts.append(loop.time())
        if len(attempts) == 1:
            raise RuntimeError("a bug: logged with its traceback, retried")
        if len(attempts) == 2:
            raise RetryLater("waiting for something")
        if len(attempts) == 3:
            return Result(requeue_after=0.05)
        finished.set()
        return Result()

    controller: Controller[str] = Controller(
        "test", reconcile, workers=1, backoff=Backoff(base=0.05, cap=1.0)
    )
    controller.start()
    controller.enqueue("k")
    await asyncio.wait_for(finished.wait(), timeout=5)
    await controller.stop()
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.045 and gaps[1] >= 0.095  # 0.05, then doubled
    assert gaps[2] >= 0.045  # requeue_after
    assert controller.queue.failures("k") == 0  # a success forgot the failures


def test_an_event_names_its_object_and_is_cut_like_kopf_and_client_go_cut_it() -> None:
    from k2think_operator.runtime.events import MAX_MESSAGE_LENGTH, Event, build_event

    obj = {
        "apiVersion": "k2think.dev/v1alpha1",
        "kind": "K2ThinkDeployment",
        "metadata": {"name": "demo", "namespace": "team-a", "uid": "u-1"},
    }
    body = build_event(
        obj,
        Event.warn("InvalidSpec", "x" * 5000),
        component="k2think-operator",
        instance="pod-0",
        now="2026-12-06T00:00:00Z",
    )
    assert body["involvedObject"] == {
        "apiVersion": "k2think.dev/v1alpha1",
        "kind": "K2ThinkDeployment",
        "name": "demo",
        "namespace": "team-a",
        "uid": "u-1",
    }
    assert body["type"] == "Warning" and body["reason"] == "InvalidSpec"
    assert len(body["message"]) <= MAX_MESSAGE_LENGTH and "..." in body["message"]
    assert body["metadata"] == {"generateName": "demo.", "namespace": "team-a"}
    assert body["source"] == {"component": "k2think-operator"}


class _EventSink:
    """``Kube.create`` for Events: keeps what was posted; refuses the reasons in ``refuse``; each
    post waits for ``gate`` when given (so a test sees what is queued behind a slow post)."""

    def __init__(self, refuse: frozenset[str] = frozenset(), gate: asyncio.Event | None = None):
        self.posted: list[dict[str, object]] = []
        self.refuse = refuse
        self.gate = gate

    async def create(self, api: object, body: dict[str, object], **_: object) -> bool:
        if self.gate is not None:
            await self.gate.wait()
        if body["reason"] in self.refuse:
            raise ApplyRejected("events is forbidden")
        self.posted.append(body)
        return True


def _recorder(sink: _EventSink, **kwargs: int) -> EventRecorder:
    return EventRecorder(cast(Any, sink), "k2think-operator", **kwargs)


DEMO = {
    "apiVersion": "k2think.dev/v1alpha1",
    "kind": "K2ThinkDeployment",
    "metadata": {"name": "demo", "namespace": "team-a", "uid": "u-1", "spec": "not copied"},
}


async def test_events_are_posted_after_record_returns_in_order_and_name_their_object() -> None:
    gate = asyncio.Event()
    sink = _EventSink(gate=gate)
    recorder = _recorder(sink)
    for i in range(5):
        recorder.record(DEMO, Event.normal("Created", f"applied {i}"))
    await asyncio.sleep(0)
    assert sink.posted == []  # queued: the reconcile that recorded them did not wait
    gate.set()
    await recorder.flush()
    assert [e["message"] for e in sink.posted] == [f"applied {i}" for i in range(5)]
    assert sink.posted[0]["involvedObject"] == {
        "apiVersion": "k2think.dev/v1alpha1",
        "kind": "K2ThinkDeployment",
        "name": "demo",
        "namespace": "team-a",
        "uid": "u-1",
    }
    await recorder.close()


async def test_a_refused_event_is_logged_and_the_next_ones_still_go(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = _EventSink(refuse=frozenset({"Planned"}))
    recorder = _recorder(sink)
    recorder.record(DEMO, Event.normal("Planned", "a plan"))
    recorder.record(DEMO, Event.warn("GcsFaultToleranceOff", "risk"))
    await recorder.flush()
    assert [(e["reason"], e["type"]) for e in sink.posted] == [("GcsFaultToleranceOff", "Warning")]
    assert "event Planned about" in caplog.text and "not posted" in caplog.text
    await recorder.close()


async def test_events_beyond_the_bound_are_dropped_and_close_posts_the_rest() -> None:
    gate = asyncio.Event()
    sink = _EventSink(gate=gate)
    recorder = _recorder(sink, max_queued=3)
    for i in range(6):
        recorder.record(DEMO, Event.normal("Created", str(i)))
        await asyncio.sleep(0)  # the poster takes "0" off the queue and waits at the gate
    assert recorder.dropped == 2  # "0" in flight, "1".."3" queued, "4" and "5" dropped
    gate.set()
    await recorder.close()
    assert [e["message"] for e in sink.posted] == ["0", "1", "2", "3"]
    await recorder.close()  # twice is fine


async def test_close_gives_up_on_a_post_that_never_ends() -> None:
    sink = _EventSink(gate=asyncio.Event())  # never set
    recorder = _recorder(sink)
    recorder.record(DEMO, Event.normal("Created", "stuck"))
    await asyncio.wait_for(recorder.close(timeout=0.05), timeout=5)
    assert sink.posted == []


async def test_a_bursts_events_wait_while_the_controllers_are_busy_never_past_the_hold() -> None:
    """In a burst, Events yield to the reconciles (the burst's writes go first), but a busy
    controller does not hold them past ``max_hold``; a steady state's few are posted at once."""
    sink = _EventSink()
    busy = True
    recorder = EventRecorder(cast(Any, sink), "k2think-operator", max_hold=30.0, burst=3)
    recorder.yield_to(lambda: busy)
    recorder.record(DEMO, Event.normal("Created", "alone"))
    await asyncio.wait_for(recorder.flush(), timeout=5)
    assert [e["message"] for e in sink.posted] == ["alone"]  # no burst: busy or not
    for message in ("held 1", "held 2", "held 3"):
        recorder.record(DEMO, Event.normal("Created", message))
    await asyncio.sleep(0.6)
    assert len(sink.posted) == 1  # a burst, and the controllers still have work
    busy = False
    await asyncio.wait_for(recorder.flush(), timeout=5)
    assert [e["message"] for e in sink.posted] == ["alone", "held 1", "held 2", "held 3"]
    # Busy for good: the hold ends after max_hold.
    busy = True
    capped = EventRecorder(cast(Any, sink), "k2think-operator", max_hold=0.3, burst=1)
    capped.yield_to(lambda: busy)
    capped.record(DEMO, Event.normal("Created", "capped"))
    await asyncio.wait_for(capped.flush(), timeout=5)
    assert sink.posted[-1]["message"] == "capped"
    await recorder.close()
    await capped.close()
