"""What the session list and the timeline show: per-robot-session figures over the last few minutes.

Pure bookkeeping (no torch, no transport, no threads): :class:`SessionBoard` is fed one :class:`PlanPoint` per
answered plan and summarises it on demand. The live server feeds it from the plan service; a replay or a plan log
writer feeds it from recorded events, so both show the same figures.

Attention order (the session list's sort key, highest first)::

    attention = (1 - confidence of the last plans) + p95 latency / 1 s + deadline-hit rate

One second is the span of a chunk (H model frames x frame_stride control steps): a plan that takes as long as the
chunk it answers lasts needs as much attention as one the model has no confidence in. Stale sessions (no plan for
``stale_s``) go to the bottom, greyed out; sessions idle for ``history_s`` leave the board.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np

#: Plans the per-session latency percentiles and the confidence trend look at (most recent).
RECENT = 100
TREND = 30
#: Window of the plans-per-second figures (s).
RATE_WINDOW_S = 10.0
#: Window of the server-wide latency percentiles (s).
SERVER_WINDOW_S = 60.0
#: Latency that counts as much as zero confidence in the attention score (s): one chunk's span.
LATENCY_SCALE_S = 1.0


@dataclass(frozen=True)
class PlanPoint:
    """One answered plan, as the board keeps it."""

    t: float  # wall clock (s) when the reply left the planner
    latency_ms: float  # server-side total: decode + queue + plan
    confidence: float  # [0, 1]
    uncertainty: float | None  # mean normalised entropy over the predicted frames; None in mode "policy"
    deadline_hit: bool


@dataclass
class SessionTrack:
    """A session's recent plans (bounded) and its totals."""

    key: str
    instruction: str = ""
    plans: int = 0
    deadline_hits: int = 0
    last_sequence: int = 0
    points: deque[PlanPoint] = field(default_factory=deque)


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


class SessionBoard:
    """Sessions by key (the robot's session id), least recently planned first; bounded in sessions and points."""

    def __init__(
        self, history_s: float = 300.0, stale_s: float = 10.0, max_sessions: int = 256, max_points: int = 4096
    ) -> None:
        self.history_s = history_s
        self.stale_s = stale_s
        self.max_sessions = max_sessions
        self.max_points = max_points
        self._tracks: OrderedDict[str, SessionTrack] = OrderedDict()
        self._all: deque[tuple[float, float]] = deque(maxlen=max_points)  # (t, latency_ms) of every session

    def __len__(self) -> int:
        return len(self._tracks)

    def __contains__(self, key: str) -> bool:
        return key in self._tracks

    def record(self, key: str, sequence: int, instruction: str, point: PlanPoint) -> SessionTrack:
        track = self._tracks.get(key)
        if track is None:
            track = self._tracks[key] = SessionTrack(key, points=deque(maxlen=self.max_points))
        self._tracks.move_to_end(key)
        track.instruction = instruction
        track.plans += 1
        track.deadline_hits += bool(point.deadline_hit)
        track.last_sequence = sequence
        track.points.append(point)
        self._all.append((point.t, point.latency_ms))
        self.expire(point.t)
        while len(self._tracks) > self.max_sessions:
            self._tracks.popitem(last=False)
        return track

    def expire(self, now: float) -> None:
        """Forget points older than ``history_s`` and sessions without any left."""
        horizon = now - self.history_s
        for key in list(self._tracks):
            points = self._tracks[key].points
            while points and points[0].t < horizon:
                points.popleft()
            if not points:
                del self._tracks[key]
        while self._all and self._all[0][0] < horizon:
            self._all.popleft()

    def keys(self) -> list[str]:
        return list(self._tracks)

    # ------------------------------------------------------------------------------------------- summaries
    def summary(self, key: str, now: float) -> dict:
        """One row of the session list."""
        track = self._tracks[key]
        points = list(track.points)
        recent = points[-RECENT:]
        latencies = [p.latency_ms for p in recent]
        confidences = [p.confidence for p in points[-TREND:]]
        last = points[-1]
        age_s = max(now - last.t, 0.0)
        in_window = sum(1 for p in points if p.t > now - RATE_WINDOW_S)
        span = min(RATE_WINDOW_S, max(now - points[0].t, 1e-9)) if len(points) > 1 else RATE_WINDOW_S
        confidence = float(np.mean(confidences[-5:])) if confidences else 0.0
        p95 = _percentile(latencies, 95)
        hit_rate = sum(p.deadline_hit for p in recent) / len(recent) if recent else 0.0
        stale = age_s > self.stale_s
        attention = (1.0 - confidence) + (p95 or 0.0) / 1000.0 / LATENCY_SCALE_S + hit_rate
        return {
            "id": key,
            "instruction": track.instruction,
            "plans": track.plans,
            "last_sequence": track.last_sequence,
            "plans_per_s": round(in_window / span, 2),
            "last_plan_age_s": round(age_s, 2),
            "p50_ms": _percentile(latencies, 50),
            "p95_ms": p95,
            "deadline_hits": track.deadline_hits,
            "confidence": round(confidence, 4),
            "confidence_trend": [round(c, 4) for c in confidences],
            "uncertainty": _finite(last.uncertainty),
            "stale": stale,
            "attention": round(attention, 4),
        }

    def summaries(self, now: float) -> list[dict]:
        """The session list: fresh sessions by attention (highest first), then stale ones, most recent first."""
        self.expire(now)
        rows = [self.summary(key, now) for key in self._tracks]
        return sorted(rows, key=lambda r: (r["stale"], r["last_plan_age_s"] if r["stale"] else -r["attention"]))

    def history(self, key: str) -> list[list[float | None]]:
        """The timeline of one session: ``[t, confidence, uncertainty, latency_ms]`` per plan, oldest first."""
        track = self._tracks.get(key)
        if track is None:
            return []
        return [
            [round(p.t, 3), round(p.confidence, 4), _finite(p.uncertainty), round(p.latency_ms, 1)]
            for p in track.points
        ]

    def server(self, now: float) -> dict:
        """Server-wide plans/s (last 10 s) and latency percentiles (last 60 s), over every session."""
        window = [ms for t, ms in self._all if t > now - SERVER_WINDOW_S]
        rate = sum(1 for t, _ in self._all if t > now - RATE_WINDOW_S) / RATE_WINDOW_S
        return {
            "plans_per_s": round(rate, 2),
            "p50_ms": _percentile(window, 50),
            "p99_ms": _percentile(window, 99),
            "sessions": len(self._tracks),
        }
