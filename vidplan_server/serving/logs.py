"""Log lines about requests, rate-limited: a client sending garbage in a loop must not flood the log.

Each kind of line (its ``key``, e.g. ``("grpc", "INVALID_ARGUMENT")``) gets at most ``burst`` lines per
``period_s``; the next line that gets through says how many were held back. Client-supplied text is cut and
escaped (:func:`~vidplan_server.serving.validation.show`-style) by the callers, so one line stays one line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Hashable


class RateLimitedLog:
    """A logger front that lets ``burst`` lines per key through every ``period_s`` seconds."""

    def __init__(self, logger: logging.Logger, period_s: float = 10.0, burst: int = 5,
                 clock=time.monotonic) -> None:
        self.logger = logger
        self.period_s = period_s
        self.burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[Hashable, list] = {}  # key -> [window start, lines in it, held back]

    def log(self, level: int, key: Hashable, message: str, *, exc_info: BaseException | None = None) -> bool:
        """Log ``message`` unless this key is over its budget; True when it was written."""
        now = self._clock()
        with self._lock:
            window = self._windows.get(key)
            if window is None or now - window[0] >= self.period_s:
                if len(self._windows) > 1024:  # keys are a small fixed set; this only bounds a misuse
                    self._windows.clear()
                held = window[2] if window is not None else 0
                window = self._windows[key] = [now, 0, held]
            if window[1] >= self.burst:
                window[2] += 1
                return False
            window[1] += 1
            held, window[2] = window[2], 0
        suffix = f" ({held} similar line(s) held back)" if held else ""
        self.logger.log(level, message + suffix, exc_info=exc_info)
        return True

    def warning(self, key: Hashable, message: str) -> bool:
        return self.log(logging.WARNING, key, message)

    def info(self, key: Hashable, message: str) -> bool:
        return self.log(logging.INFO, key, message)
