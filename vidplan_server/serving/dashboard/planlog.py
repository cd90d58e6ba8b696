"""Plan logs: the dashboard's events of a run, one JSON object per line, for ``vidplan dashboard --replay``.

A plan log is what a browser watching every session would have received (:mod:`.events`): ``hello`` first, then
``plan`` and ``render`` events and a ``snapshot`` at most every second, in time order. ``vidplan serve
--dashboard-record FILE`` writes one from a live server (every session counts as watched, so its heatmaps are
rendered at ``--dashboard-hz``, off the critical path like any other watcher's). The file is appended to by one
thread from a bounded queue; when the disk falls behind, events are dropped (counted) rather than held in memory.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

from vidplan_server.serving.dashboard.routes import sse

log = logging.getLogger(__name__)

#: The file name ``vidplan dashboard --replay DIR`` looks for in DIR.
LOG_NAME = "planlog.jsonl"


def find_log(path: Path) -> Path:
    """``path`` itself when it is a file, else ``path/planlog.jsonl``; FileNotFoundError says what was looked for."""
    path = Path(path)
    if path.is_file():
        return path
    candidate = path / LOG_NAME
    if candidate.is_file():
        return candidate
    raise FileNotFoundError(f"{path}: no plan log (expected a .jsonl file or a folder with {LOG_NAME})")


def read_events(path: Path) -> Iterator[dict]:
    """The events of a plan log, in file order (blank lines skipped; a line that is not JSON raises ValueError
    naming it)."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not a JSON event ({exc.msg})") from None


class PlanLogWriter:
    """Appends events to a plan log from a thread of its own; :meth:`offer` never blocks (a full queue drops)."""

    def __init__(self, path: Path, maxsize: int = 512) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._queue: queue.Queue[dict | None] = queue.Queue(maxsize)
        self.written = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._loop, name="vidplan-dashboard-planlog", daemon=True)
        self._thread.start()

    def offer(self, event: dict) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, then close the file."""
        if not self._thread.is_alive():
            return
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            pass
        self._thread.join(timeout_s)

    def _loop(self) -> None:
        try:
            while True:
                event = self._queue.get()
                if event is None:
                    return
                self._file.write(sse(event)[len("data: ") : -1])  # the same JSON the browser gets, one line
                self.written += 1
                if self._queue.empty():
                    self._file.flush()
        except OSError as exc:
            log.error("plan log %s: %s; no more events are written", self.path, exc)
        finally:
            self._file.close()
