"""Prometheus metrics of the plan service, in a registry of its own.

Each service gets its own :class:`~prometheus_client.CollectorRegistry` (so tests can build several),
which the HTTP app also hands to prometheus-fastapi-instrumentator and serves at ``/metrics``.
Latencies are in seconds (the Prometheus convention), with millisecond-spaced buckets around the
66.7 ms control cycle.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Histogram buckets (s): dense around one 15 Hz cycle (66.7 ms), then out to a few seconds for CPU plans.
LATENCY_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,
    0.033,
    0.05,
    0.0667,
    0.08,
    0.1,
    0.133,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    2.0,
    5.0,
)

#: Request outcomes counted in ``vidplan_requests_total``.
OUTCOMES = (
    "ok",
    "invalid_argument",
    "overloaded",
    "deadline_exceeded",
    "no_safe_plan",
    "unauthenticated",
    "unavailable",
    "stale_dropped",
    "cancelled",
    "error",
)


class ServingMetrics:
    """Counters, gauges and histograms of one :class:`PlanService`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "vidplan_requests",
            "Plan requests by transport, call and outcome.",
            ["transport", "call", "outcome"],
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "vidplan_stage_seconds",
            "Latency of each stage of a plan request (s): decode, queue, plan, total, and the planner's own stages.",
            ["stage"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "vidplan_queue_depth", "Requests waiting for the planner thread.", registry=self.registry
        )
        self.in_flight = Gauge(
            "vidplan_in_flight", "Requests admitted and not yet answered (waiting + running).", registry=self.registry
        )
        self.sessions = Gauge("vidplan_sessions", "Live robot sessions.", registry=self.registry)
        self.session_bytes = Gauge(
            "vidplan_session_bytes", "Bytes all sessions hold (frames and ids); bounded by --max-session-mb.",
            registry=self.registry,
        )
        self.ready = Gauge(
            "vidplan_ready",
            "1 when the model is loaded and warmed up and the server accepts work.",
            registry=self.registry,
        )

    def observe_timings(self, timings_ms: dict[str, float]) -> None:
        """Record per-stage timings given in milliseconds."""
        for stage, ms in timings_ms.items():
            self.stage_seconds.labels(stage=stage).observe(ms / 1000.0)
