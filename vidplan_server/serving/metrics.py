"""Prometheus metrics of the plan service, in a registry of its own.

Each service gets its own :class:`~prometheus_client.CollectorRegistry` (so tests can build several),
which the HTTP app also hands to prometheus-fastapi-instrumentator and serves at ``/metrics``.
Latencies are in seconds (the Prometheus convention), with millisecond-spaced buckets around the
66.7 ms control cycle.

The latency histograms never mix stages that contain each other in one label: ``vidplan_request_seconds``
is a whole answered call (arrival to reply) by transport and call; ``vidplan_stage_seconds`` splits it into
``decode``, ``queue`` and ``plan``; ``vidplan_planner_stage_seconds`` splits ``plan`` into the planner's own
stages (``encode``, ``propose``, ``rollout``, ``score``, ``refine``, ``decode``). The registry also holds the
standard ``process_*`` (resident memory, CPU time, open files) and ``python_*`` (interpreter, garbage collector)
metrics and ``vidplan_build_info`` (server version, model version, Python, device).
"""

from __future__ import annotations

import platform

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

from vidplan_server import __version__

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

#: Stages of ``vidplan_stage_seconds`` (they add up to a call's latency, up to the reply's encoding).
REQUEST_STAGES = ("decode", "queue", "plan")

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
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        PlatformCollector(registry=self.registry)  # python_info
        GCCollector(registry=self.registry)  # python_gc_*
        self.build_info = Info(
            "vidplan_build", "Server version, model version, Python and device of this server.", registry=self.registry
        )
        self.build_info.info(
            {"version": __version__, "model_version": "", "python": platform.python_version(), "device": ""}
        )
        self.requests = Counter(
            "vidplan_requests",
            "Plan requests by transport, call and outcome.",
            ["transport", "call", "outcome"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "vidplan_request_seconds",
            "Latency of answered plan requests from arrival to reply (s), by transport and call.",
            ["transport", "call"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "vidplan_stage_seconds",
            "Latency of the parts of a plan request (s): decode, queue (waiting for the planner), plan.",
            ["stage"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.planner_stage_seconds = Histogram(
            "vidplan_planner_stage_seconds",
            "Latency of the planner's own stages within `plan` (s): encode, propose, rollout, score, refine, decode.",
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
            "vidplan_session_bytes",
            "Bytes all sessions hold (frames and ids); bounded by --max-session-mb.",
            registry=self.registry,
        )
        self.ready = Gauge(
            "vidplan_ready",
            "1 when the model is loaded and warmed up and the server accepts work.",
            registry=self.registry,
        )

    def set_build_info(self, model_version: str, device: str = "") -> None:
        self.build_info.info(
            {
                "version": __version__,
                "model_version": model_version,
                "python": platform.python_version(),
                "device": device,
            }
        )

    def observe_timings(self, timings_ms: dict[str, float]) -> None:
        """Record a request's stage timings (ms): decode, queue and plan; others (``total``) are not stages."""
        for stage in REQUEST_STAGES:
            if stage in timings_ms:
                self.stage_seconds.labels(stage=stage).observe(timings_ms[stage] / 1000.0)

    def observe_planner_timings(self, timings_ms: dict[str, float]) -> None:
        """Record the planner's stage timings (ms); its ``total`` is the request's ``plan`` stage."""
        for stage, ms in timings_ms.items():
            if stage != "total":
                self.planner_stage_seconds.labels(stage=stage).observe(ms / 1000.0)
