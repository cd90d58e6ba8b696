"""What a load test measured: HDR latency histograms, errors by status, the server's stage times, a timeline.

Latencies are recorded in microseconds in HDR histograms (``hdrhistogram``: 3 significant figures from 1 us to 10
min, fixed memory however long a soak runs). Two of them: ``raw`` holds what was measured; ``corrected`` also
holds, for a reply that took longer than the expected request interval ``I`` (horizon / control rate), the
latencies ``L - I, L - 2I, ...`` of the requests the robot would have sent meanwhile had the server kept up
(``record_corrected_value``): without it a server that stalls everybody looks better the longer it stalls, because
the waiting robots send less (coordinated omission). Percentiles are reported from ``corrected``; ``raw`` is kept
beside for comparison.

Only requests *sent* after the warm-up (``warmup_s`` from the start of the run or ramp stage) are counted; their
percentiles are over the requests that were answered with a plan (errors are counted by status instead, so fast
refusals never make the latency look good). A deadline miss is a request that did not bring a plan within the
budget, the robot's view: a plan that came back late, or any error (a refusal, ``DEADLINE_EXCEEDED``, a timeout);
the miss rate is over all requests counted. ``deadline_exceeded`` counts the errors that were the deadline's.

The corrected histogram's lower percentiles are *below* the measured ones when replies take longer than the
interval (the requests a robot would have sent meanwhile would have waited less): read the corrected p99 / p99.9
as the tail a robot sees, and ``latency_ms_uncorrected``'s p50 as the typical plan.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from hdrh.histogram import HdrHistogram

from vidplan_server.apps.loadtest.replay import USED
from vidplan_server.apps.loadtest.transport import Outcome

LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES = 1, 600_000_000, 3
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9}
MAX_SAMPLES = 200_000  # timeline points kept for the plot (a 30-min soak of 8 robots sends about 30 000 requests)


class Latencies:
    """An HDR histogram of microseconds with its exact sum (hdrhistogram's own mean walks every bucket in Python,
    which took 0.6 s per call here)."""

    def __init__(self) -> None:
        self.histogram = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)
        self.total_us = 0

    def record(self, value_us: int) -> None:
        self.histogram.record_value(value_us)
        self.total_us += value_us

    def record_corrected(self, value_us: int, expected_interval_us: int) -> None:
        """``value_us``, then ``value_us - I``, ``value_us - 2I``, ... while above ``I`` (hdrhistogram's
        ``record_corrected_value``, with the sum kept)."""
        while True:
            self.record(value_us)
            if expected_interval_us <= 0 or value_us <= expected_interval_us:
                return
            value_us -= expected_interval_us

    @property
    def count(self) -> int:
        return int(self.histogram.get_total_count())


def to_us(ms: float) -> int:
    """Milliseconds -> whole microseconds within the histograms' range."""
    return int(min(max(round(ms * 1000.0), LOWEST_US), HIGHEST_US))


def percentiles_ms(latencies: Latencies) -> dict[str, float | int | None]:
    """p50 / p90 / p99 / p99.9 / max / mean in ms and the count; None values for an empty histogram."""
    h, count = latencies.histogram, latencies.count
    out: dict[str, float | int | None] = {"count": count}
    for name, q in PERCENTILES.items():
        out[name] = h.get_value_at_percentile(q) / 1000.0 if count else None
    out["max"] = h.get_max_value() / 1000.0 if count else None
    out["mean"] = round(latencies.total_us / count / 1000.0, 3) if count else None
    return out


def percentile_curve_ms(latencies: Latencies, ticks_per_half_distance: int = 5) -> list[tuple[float, float]]:
    """(percentile, latency ms) points of the whole distribution, for the percentile plot."""
    histogram = latencies.histogram
    if latencies.count == 0:
        return []
    return [
        (item.percentile_level_iterated_to, item.value_iterated_to / 1000.0)
        for item in histogram.get_percentile_iterator(ticks_per_half_distance)
    ]


@dataclass(frozen=True)
class Sample:
    """One request, for the timeline: when it was sent (s from the run's start), what it took, what it came to."""

    sent_s: float
    latency_ms: float
    robot: int
    key: str  # "OK" or the error key
    counted: bool  # sent after the warm-up


class LatencyRecorder:
    """Collects one run's (or ramp stage's) requests. Times are the run clock's seconds."""

    def __init__(self, start_s: float, warmup_s: float, expected_interval_s: float, budget_ms: float) -> None:
        self.start_s, self.warmup_s = start_s, warmup_s
        self.expected_interval_us = to_us(1000.0 * expected_interval_s)
        self.budget_ms = budget_ms
        self.corrected, self.raw = Latencies(), Latencies()
        self.stages: dict[str, Latencies] = {}
        self.errors: Counter[str] = Counter()
        self.uses: Counter[str] = Counter()  # what the robots could do with the replies (replay.USED, LATE, ...)
        self.requests = self.plans = self.deadline_misses = self.deadline_exceeded = self.planner_deadline_hits = 0
        self.warmup_requests = 0
        self.seen_plans = self.seen_errors = 0  # warm-up included, for the live progress line
        self.samples: list[Sample] = []
        self.samples_dropped = 0

    def record(self, robot: int, sent_s: float, done_s: float, outcome: Outcome, use: str) -> None:
        """One finished request: sent at ``sent_s``, answered (or given up) at ``done_s``."""
        latency_ms = 1000.0 * (done_s - sent_s)
        counted = sent_s >= self.start_s + self.warmup_s
        self.seen_plans += outcome.ok
        self.seen_errors += not outcome.ok
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(Sample(sent_s - self.start_s, latency_ms, robot, outcome.key, counted))
        else:
            self.samples_dropped += 1
        if not counted:
            self.warmup_requests += 1
            return
        self.requests += 1
        self.uses[use] += 1
        if not outcome.ok:
            self.errors[outcome.key] += 1
            self.deadline_misses += 1
            self.deadline_exceeded += outcome.deadline_exceeded
            return
        self.plans += 1
        self.deadline_misses += latency_ms > self.budget_ms
        value = to_us(latency_ms)
        self.raw.record(value)
        self.corrected.record_corrected(value, self.expected_interval_us)
        response = outcome.response
        self.planner_deadline_hits += bool(response.deadline_hit)
        for stage, ms in response.timings_ms.items():
            if math.isfinite(ms) and ms >= 0:
                self.stages.setdefault(stage, Latencies()).record(to_us(ms))

    def p99_ms(self) -> float | None:
        return percentiles_ms(self.corrected)["p99"]

    def summary(self, window_s: float) -> dict:
        """The figures of ``loadtest.json`` for a measurement window of ``window_s`` seconds (after the warm-up)."""
        window_s = max(window_s, 1e-9)
        return {
            "requests": self.requests,
            "plans": self.plans,
            "plans_per_s": round(self.plans / window_s, 3),
            "requests_per_s": round(self.requests / window_s, 3),
            "latency_ms": percentiles_ms(self.corrected),
            "latency_ms_uncorrected": percentiles_ms(self.raw),
            "deadline_ms": self.budget_ms,
            "deadline_misses": self.deadline_misses,
            "deadline_exceeded": self.deadline_exceeded,
            "deadline_miss_rate": round(self.deadline_misses / self.requests, 4) if self.requests else None,
            "planner_deadline_hit_rate": round(self.planner_deadline_hits / self.plans, 4) if self.plans else None,
            "errors_by_status": dict(sorted(self.errors.items())),
            "error_rate": round(sum(self.errors.values()) / self.requests, 4) if self.requests else None,
            "replies_used": dict(sorted(self.uses.items())),
            "server_stage_ms": {
                stage: {k: v for k, v in percentiles_ms(h).items() if k in ("count", "mean", "p50", "p99")}
                for stage, h in sorted(self.stages.items())
            },
            "warmup_requests": self.warmup_requests,
            "window_s": round(window_s, 3),
        }

    @property
    def used(self) -> int:
        return self.uses[USED]
