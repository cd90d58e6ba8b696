"""The planner's single worker thread with bounded admission and deadlines kept in the queue.

The planner is not thread-safe and saturates the device, so every plan runs on one thread, in arrival
order. Requests reserve a slot first (:meth:`PlannerWorker.reserve`): when ``max_queue`` requests are
already waiting, the reservation fails at once with :class:`Overloaded`, which keeps latency bounded
instead of letting a queue grow behind a busy planner.

A queued call leaves the queue, and gives its slot back, the moment its deadline passes or its caller is
cancelled (the client went away): :meth:`Slot.run` withdraws it, so it never runs and holds nothing while
the planner is busy with something else. A call that has already started runs to its end (the planner is
anytime and keeps to the deadline it was given).

Cross-robot batching (:mod:`.batching`): a call submitted with a :class:`Batched` tag may be planned together
with other queued calls of the same group. When such a call reaches the head of the queue, the thread waits until
``window_s`` has passed since it was queued (or ``max_size`` companions are waiting), then lets the group pick the
calls that share the batch (:meth:`BatchGroup.select`) and runs them in one :meth:`BatchGroup.run`, answering each
call as soon as its own result is out. Calls the group leaves out stay queued, in order. Until it is picked a
batched call can leave the queue (deadline, cancellation) like any other.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from vidplan_server.serving.errors import Overloaded

T = TypeVar("T")


class BatchGroup(Protocol):
    """Plans several queued calls in one go (:class:`~vidplan_server.serving.batching.PlanBatcher`)."""

    window_s: float  # how long the first call of a batch waits for companions (s)
    max_size: int  # the most calls in one batch

    def select(self, items: Sequence[Any]) -> list[int]:
        """Indices of the queued ``items`` (oldest first) that share the next batch; always includes 0."""
        ...

    def run(self, items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        """(index, result or exception) per item, as each is ready."""
        ...


@dataclass(frozen=True)
class Batched:
    """Tags a call as batchable: its group and what the group needs to plan it."""

    group: BatchGroup
    item: Any


class _Job(Generic[T]):
    __slots__ = ("fn", "future", "holds_slot", "batch", "queued_at")

    def __init__(self, fn: Callable[[], T], holds_slot: bool, batch: Batched | None = None) -> None:
        self.fn = fn
        self.future: Future[T] = Future()
        self.holds_slot = holds_slot  # a reserved queue slot, given back when the job leaves the queue
        self.batch = batch
        self.queued_at = time.perf_counter()


class PlannerWorker:
    """One thread that runs blocking planner calls; ``waiting`` counts admitted calls not yet started."""

    def __init__(self, max_queue: int, on_depth: Callable[[int], None] | None = None) -> None:
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.max_queue = max_queue
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._waiting = 0  # reserved slots: queued jobs plus reservations not submitted yet
        self._running = 0
        self._stopping = False
        self._on_depth = on_depth or (lambda depth: None)
        self.mean_run_s = 0.5  # running mean of call durations (s), for Retry-After estimates
        self._thread = threading.Thread(target=self._loop, name="vidplan-planner", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def running(self) -> int:
        return self._running

    @property
    def saturated(self) -> bool:
        """True when the next reservation would be refused."""
        return self._waiting >= self.max_queue

    def reserve(self) -> Slot:
        """Take a queue slot now or raise :class:`Overloaded`. Use as a context manager."""
        with self._cond:
            if self._waiting >= self.max_queue:
                retry_after_s = (self._waiting + self._running) * self.mean_run_s
                raise Overloaded(
                    f"planner queue full ({self._waiting} waiting, limit {self.max_queue}); retry later",
                    retry_after_s=max(1.0, math.ceil(retry_after_s)),
                )
            self._waiting += 1
            depth = self._waiting
        self._on_depth(depth)
        return Slot(self)

    def run_blocking(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the worker thread now and wait (startup work such as warm-up; no admission)."""
        job = _Job(fn, holds_slot=False)
        with self._cond:
            self._queue.append(job)
            self._cond.notify()
        return job.future.result()

    def shutdown(self) -> None:
        """Cancel what is still queued, let the running call finish, end the thread."""
        with self._cond:
            self._stopping = True
            dropped = list(self._queue)
            self._queue.clear()
            self._cond.notify()
        for job in dropped:
            job.future.cancel()
            if job.holds_slot:
                self._release()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    # -- the thread
    def _loop(self) -> None:
        while True:
            with self._cond:
                jobs = self._next_jobs()
                if jobs is None:
                    return
                admitted = [job for job in jobs if job.future.set_running_or_notify_cancel()]
                self._running += len(admitted)
            for job in jobs:
                if job.holds_slot:
                    self._release()
            if not admitted:
                continue
            count = len(admitted)
            start = time.perf_counter()
            try:
                if admitted[0].batch is None:
                    self._run_one(admitted[0])
                else:
                    self._run_batch(admitted)
            finally:
                per_call = (time.perf_counter() - start) / count
                jobs = admitted = []  # drop the requests' arrays before waiting for the next jobs
                with self._cond:
                    self._running -= count
                    self.mean_run_s = 0.8 * self.mean_run_s + 0.2 * per_call

    def _next_jobs(self) -> list[_Job] | None:
        """Under the lock: the next job, or the calls of the next batch; None when the worker stops."""
        while True:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if not self._queue:
                return None
            head = self._queue[0]
            if head.batch is None:
                return [self._queue.popleft()]
            group = head.batch.group
            mates = [job for job in self._queue if job.batch is not None and job.batch.group is group]
            picked = [mates[i] for i in group.select([job.batch.item for job in mates])]
            wait = head.queued_at + group.window_s - time.perf_counter()
            if wait > 0 and len(picked) < group.max_size and not self._stopping:
                self._cond.wait(wait)  # a new call, a withdrawal or the end of the window wakes it
                continue
            for job in picked:
                self._queue.remove(job)
            return picked

    @staticmethod
    def _run_one(job: _Job) -> None:
        try:
            job.future.set_result(job.fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            job.future.set_exception(exc)

    @staticmethod
    def _run_batch(jobs: list[_Job]) -> None:
        group = jobs[0].batch.group
        done = [False] * len(jobs)
        try:
            for i, outcome in group.run([job.batch.item for job in jobs]):
                if isinstance(outcome, BaseException):
                    jobs[i].future.set_exception(outcome)
                else:
                    jobs[i].future.set_result(outcome)
                done[i] = True
        except BaseException as exc:  # noqa: BLE001 - handed to every caller still waiting
            for job, finished in zip(jobs, done, strict=True):
                if not finished:
                    job.future.set_exception(exc)
            return
        for job, finished in zip(jobs, done, strict=True):
            if not finished:
                job.future.set_exception(RuntimeError("the batch ended without an answer for this call"))

    # -- used by Slot
    def _submit(self, fn: Callable[[], T], batch: Batched | None = None) -> _Job[T]:
        """Queue ``fn`` in a reserved slot; the slot stays taken until the job starts or is withdrawn."""
        job = _Job(fn, holds_slot=True, batch=batch)
        with self._cond:
            if self._stopping:
                raise RuntimeError("the planner worker has shut down")
            self._queue.append(job)
            self._cond.notify()
        return job

    def _withdraw(self, job: _Job) -> bool:
        """Take ``job`` out of the queue if it has not started; True when it was (its slot is given back)."""
        with self._cond:
            try:
                self._queue.remove(job)
            except ValueError:
                return False
            job.future.cancel()
            self._cond.notify()  # a batch window waiting on this call looks again
        self._release()
        return True

    def _release(self) -> None:
        with self._cond:
            self._waiting -= 1
            depth = self._waiting
        self._on_depth(depth)


class Slot:
    """A reserved place in the planner queue; released on exit unless :meth:`run` took it over."""

    def __init__(self, worker: PlannerWorker) -> None:
        self._worker = worker
        self._used = False

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._used:
            self._used = True
            self._worker._release()

    async def run(
        self,
        fn: Callable[[], T],
        deadline_at: float | None = None,
        on_expired: Callable[[], BaseException] | None = None,
        batch: Batched | None = None,
    ) -> T:
        """Run ``fn`` on the worker thread and return its result; with ``batch``, the call may instead be planned
        with others of its group (the group's answer for it is returned).

        While the call waits in the queue, reaching ``deadline_at`` (``time.perf_counter`` seconds) withdraws
        it and raises ``on_expired()``, and cancelling the await withdraws it too; either way its slot is free
        at once. A call that has started is awaited to its end.
        """
        if self._used:
            raise RuntimeError("a slot runs one call")
        self._used = True
        worker = self._worker
        job = worker._submit(fn, batch)
        result = asyncio.wrap_future(job.future)
        result.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved even if nobody awaits it
        try:
            if deadline_at is not None:
                left = deadline_at - time.perf_counter()
                if left > 0:
                    await asyncio.wait({result}, timeout=left)
                if not result.done() and worker._withdraw(job):
                    raise on_expired() if on_expired else TimeoutError("deadline passed in the queue")
            return await asyncio.shield(result)
        except asyncio.CancelledError:
            worker._withdraw(job)  # still queued: never runs; running: finishes, its result is dropped
            raise
