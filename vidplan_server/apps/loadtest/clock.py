"""The load test's time: every wait of the driver goes through a :class:`Clock`, so tests can replace it.

The driver never calls ``time`` or ``asyncio.sleep`` itself: it reads :meth:`Clock.now` and waits with
:meth:`Clock.sleep_until`. :class:`MonotonicClock` is the real one; a test passes a virtual clock whose time moves
only when every coroutine waits on it, so pacing is checked exactly and instantly.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Seconds on a monotonic scale, and a way to wait for a point on it."""

    def now(self) -> float: ...

    async def sleep_until(self, t: float) -> None: ...


class MonotonicClock:
    """``time.monotonic`` and ``asyncio.sleep``."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep_until(self, t: float) -> None:
        # Yield even when t has passed, so a robot that is behind never starves the others.
        await asyncio.sleep(max(t - time.monotonic(), 0.0))
