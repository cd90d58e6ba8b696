"""Simulated time against a real planning server: the loop's scaled clock and a plan client that keeps to it.

The simulator advances one control period (1/15 s) per command and never on its own; a robot loop driven by
:class:`ScaledClock` sees wall time divided by ``slowdown``, so one simulated second takes ``slowdown`` wall
seconds and a plan that takes L wall seconds costs the robot L / slowdown simulated seconds. :class:`TimedClient`
scales plan deadlines the same way (loop seconds to wall seconds) and times every call. Used by ``vidplan demo``
and by the closed-loop benchmark's ``--realtime`` runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class ScaledClock:
    """Loop clock = wall clock / ``slowdown``, from 0 at creation; ``sleep`` sleeps ``slowdown`` times longer."""

    def __init__(
        self,
        slowdown: float = 1.0,
        wall: Callable[[], float] = time.monotonic,
        wall_sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.slowdown, self._wall, self._wall_sleep = slowdown, wall, wall_sleep
        self._start = wall()

    def __call__(self) -> float:
        return (self._wall() - self._start) / self.slowdown

    def sleep(self, seconds: float) -> None:
        self._wall_sleep(seconds * self.slowdown)


class TimedClient:
    """The loop's plan client: scales deadlines from loop seconds to wall seconds; times each call (wall)."""

    def __init__(self, client, slowdown: float) -> None:
        self.client, self.slowdown = client, slowdown
        self.wall_ms: dict[int, float] = {}  # sequence -> round trip of an answered call
        self.responses: dict[int, object] = {}  # sequence -> the answer (the video shows its heatmaps)
        self._lock = threading.Lock()

    def plan(self, request, timeout_s: float | None = None):
        start = time.perf_counter()
        response = self.client.plan(request, timeout_s=None if timeout_s is None else timeout_s * self.slowdown)
        with self._lock:
            self.wall_ms[request.sequence] = 1000 * (time.perf_counter() - start)
            self.responses[request.sequence] = response
        return response
