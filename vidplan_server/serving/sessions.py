"""Per-robot sessions: a ring buffer of recent decoded observations, expired when idle.

A session is keyed by the client's ``session_id``. It holds the last ``capacity`` frames (decoded,
model-sized, ``(V, h, w, 3)`` uint8) with their robot-clock timestamps, and the last sequence number,
which must rise strictly. Sessions idle longer than ``ttl_s`` (server monotonic clock) are dropped;
past ``max_sessions``, or when all sessions together hold more than ``max_bytes`` (frames and ids), the
least recently used ones go. Frames older than ``keep_s`` before the newest one can never be picked for a
history again and are dropped too, which bounds memory per session. Nothing is stored for a request until it
has passed every check (the service appends last). All methods are thread-safe.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np

from vidplan_server.serving.errors import InvalidArgument


@dataclass(frozen=True)
class StoredFrame:
    frames: np.ndarray  # (V, h, w, 3) uint8, views in the model's camera order
    timestamp_s: float  # robot clock
    sequence: int


@dataclass
class Session:
    frames: deque[StoredFrame]
    nbytes: int = 0  # frames and id
    last_sequence: int | None = None
    last_timestamp_s: float | None = None
    last_seen: float = field(default_factory=time.monotonic)  # server monotonic clock (s)


class SessionStore:
    """Thread-safe map of session id to :class:`Session`."""

    def __init__(
        self, capacity: int, ttl_s: float, max_sessions: int, keep_s: float = math.inf, max_bytes: float = math.inf
    ) -> None:
        self.capacity = capacity
        self.keep_s = keep_s
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self.max_bytes = max_bytes
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    @property
    def nbytes(self) -> int:
        """Bytes all sessions hold (frames and ids)."""
        return self._bytes

    def check(self, session_id: str, sequence: int, timestamp_s: float) -> None:
        """Raise :class:`InvalidArgument` if ``sequence`` or ``timestamp_s`` does not follow the session's last.

        Does not change the session, so a refused request leaves it as it was.
        """
        with self._lock:
            self._expire(time.monotonic())  # a robot that restarts after the TTL starts a fresh session
            session = self._sessions.get(session_id)
            if session is None:
                return
            _check_order(session, sequence, timestamp_s)

    def append(self, session_id: str, frame: StoredFrame) -> list[StoredFrame]:
        """Add ``frame`` to the session (created if new) and return the session's frames, oldest first."""
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            session = self._sessions.get(session_id)
            if session is None:
                session = Session(frames=deque(), nbytes=len(session_id))
                self._sessions[session_id] = session
                self._bytes += session.nbytes
            _check_order(session, frame.sequence, frame.timestamp_s)
            session.frames.append(frame)
            session.nbytes += frame.frames.nbytes
            self._bytes += frame.frames.nbytes
            oldest_kept_s = frame.timestamp_s - self.keep_s
            while len(session.frames) > self.capacity or session.frames[0].timestamp_s < oldest_kept_s:
                old = session.frames.popleft()
                session.nbytes -= old.frames.nbytes
                self._bytes -= old.frames.nbytes
            session.last_sequence = frame.sequence
            session.last_timestamp_s = frame.timestamp_s
            session.last_seen = now
            self._sessions.move_to_end(session_id)
            # Least recently used first, never the session just written.
            while len(self._sessions) > 1 and (len(self._sessions) > self.max_sessions or self._bytes > self.max_bytes):
                self._drop(next(iter(self._sessions)))
            return list(session.frames)

    def discard(self, session_id: str) -> None:
        """Forget a session now (e.g. the anonymous session of a stream that ended)."""
        with self._lock:
            if session_id in self._sessions:
                self._drop(session_id)

    def expire(self) -> int:
        """Drop idle sessions now; returns how many remain."""
        with self._lock:
            self._expire(time.monotonic())
            return len(self._sessions)

    def _drop(self, session_id: str) -> None:
        self._bytes -= self._sessions.pop(session_id).nbytes

    def _expire(self, now: float) -> None:
        # Sessions are kept in least-recently-used order, so the idle ones are at the front.
        while self._sessions:
            sid, session = next(iter(self._sessions.items()))
            if now - session.last_seen <= self.ttl_s:
                break
            self._drop(sid)


def _check_order(session: Session, sequence: int, timestamp_s: float) -> None:
    if session.last_sequence is not None and sequence <= session.last_sequence:
        raise InvalidArgument(
            f"{sequence} is not after the session's last sequence {session.last_sequence} (out of order or repeated)",
            field="sequence",
        )
    if session.last_timestamp_s is not None and timestamp_s <= session.last_timestamp_s:
        raise InvalidArgument(
            f"{timestamp_s} is not after the session's last observation at {session.last_timestamp_s}",
            field="observation.timestamp_s",
        )
