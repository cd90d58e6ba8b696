"""The server's log: text or JSON lines, and rate-limited lines about requests.

:func:`configure_logging` sets the root logger up once for ``vidplan serve``: plain text for a terminal, or one
JSON object per line (``--log-format json``) for a log collector, with the request fields (``request_id``,
``session``, ``sequence``, ``transport``, ``call``, ``outcome``, ``latency_ms``) as keys of their own. Neither
format ever writes the bearer token (a filter replaces it should it reach a message) nor frame bytes (no line
carries a request body).

:class:`RateLimitedLog`: a client sending garbage in a loop must not flood the log. Each kind of line (its
``key``, e.g. ``("grpc", "INVALID_ARGUMENT")``) gets at most ``burst`` lines per ``period_s``; the next line that
gets through says how many were held back. Client-supplied text is cut and escaped
(:func:`~vidplan_server.serving.validation.show`-style) by the callers, so one line stays one line.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Hashable, Iterable, Mapping
from datetime import UTC, datetime

#: Attributes of a record written as JSON keys of their own (set with ``extra=`` by the request lines).
REQUEST_FIELDS = ("request_id", "session", "sequence", "transport", "call", "outcome", "latency_ms")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REDACTED = "<redacted>"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, the request
    fields a record carries, and ``exception`` (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in REQUEST_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class RedactSecrets(logging.Filter):
    """Replaces the given secrets (the bearer token) wherever they appear in a record's message."""

    def __init__(self, secrets: Iterable[str | None]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            if any(secret in message for secret in self.secrets):
                for secret in self.secrets:
                    message = message.replace(secret, REDACTED)
                record.msg, record.args = message, None
        return True


def configure_logging(
    level: str = "info", fmt: str = "text", secrets: Iterable[str | None] = (), stream=None
) -> logging.Handler:
    """One handler on the root logger (stderr), text or JSON, that never shows ``secrets``; returns it."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler


class RateLimitedLog:
    """A logger front that lets ``burst`` lines per key through every ``period_s`` seconds."""

    def __init__(self, logger: logging.Logger, period_s: float = 10.0, burst: int = 5, clock=time.monotonic) -> None:
        self.logger = logger
        self.period_s = period_s
        self.burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[Hashable, list] = {}  # key -> [window start, lines in it, held back]

    def log(
        self,
        level: int,
        key: Hashable,
        message: str,
        *,
        exc_info: BaseException | None = None,
        extra: Mapping[str, object] | None = None,
    ) -> bool:
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
        self.logger.log(level, message + suffix, exc_info=exc_info, extra=extra)
        return True

    def warning(self, key: Hashable, message: str) -> bool:
        return self.log(logging.WARNING, key, message)

    def info(self, key: Hashable, message: str) -> bool:
        return self.log(logging.INFO, key, message)
