"""The planner's single worker thread with bounded admission.

The planner is not thread-safe and saturates the device, so every plan runs on one thread, in arrival
order. Requests reserve a slot first (:meth:`PlannerWorker.reserve`): when ``max_queue`` requests are
already waiting, the reservation fails at once with :class:`Overloaded`, which keeps latency bounded
instead of letting a queue grow behind a busy planner.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from vidplan_server.serving.errors import Overloaded

T = TypeVar("T")


class PlannerWorker:
    """One thread that runs blocking planner calls; ``waiting`` counts admitted calls not yet started."""

    def __init__(self, max_queue: int, on_depth: Callable[[int], None] | None = None) -> None:
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.max_queue = max_queue
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vidplan-planner")
        self._lock = threading.Lock()
        self._waiting = 0
        self._running = 0
        self._on_depth = on_depth or (lambda depth: None)
        self.mean_run_s = 0.5  # running mean of call durations (s), for Retry-After estimates

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
        with self._lock:
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
        return self._executor.submit(fn).result()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    # -- used by Slot
    def _submit(self, fn: Callable[[], T]) -> Future[T]:
        def job() -> T:
            with self._lock:
                self._waiting -= 1
                self._running += 1
                depth = self._waiting
            self._on_depth(depth)
            start = time.perf_counter()
            try:
                return fn()
            finally:
                elapsed = time.perf_counter() - start
                with self._lock:
                    self._running -= 1
                    self.mean_run_s = 0.8 * self.mean_run_s + 0.2 * elapsed

        future = self._executor.submit(job)

        def on_done(f: Future[T]) -> None:
            if f.cancelled():  # cancelled while still queued: job() never ran, so give its slot back
                self._release()

        future.add_done_callback(on_done)
        return future

    def _release(self) -> None:
        with self._lock:
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

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the worker thread; cancelling the await while it still waits removes it from the queue."""
        if self._used:
            raise RuntimeError("a slot runs one call")
        self._used = True
        return await asyncio.wrap_future(self._worker._submit(fn))
