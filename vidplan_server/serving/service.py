"""The transport-free plan service: validate, decode, keep sessions, build the history, plan on one thread.

The gRPC servicer and the HTTP app convert wire messages to :class:`PlanCall` and call
:meth:`PlanService.plan` (or :meth:`PlanService.open_stream`); every rule about requests lives here.
Request life cycle and the ``timings_ms`` it reports::

    arrive ─► check fields ─► reserve a queue slot (or Overloaded) ─► decode + resize images  [decode]
           ─► session ring buffer ─► pick T frames by timestamp ─► wait for the planner thread  [queue]
           ─► deadline still ahead? ─► planner.plan                                            [plan]
           ─► stamp t0, i0, dt, sequence                                                       [total]
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from vidplan_server.planning.types import PlanRequest, PlanResult
from vidplan_server.serving.config import ServiceConfig
from vidplan_server.serving.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NoSafePlan,
    Overloaded,
    ServingError,
    Unauthenticated,
    Unavailable,
    from_planner_error,
)
from vidplan_server.serving.history import select_history
from vidplan_server.serving.images import decode_image
from vidplan_server.serving.messages import Image, PlanCall, PlanReply
from vidplan_server.serving.metrics import ServingMetrics
from vidplan_server.serving.sessions import SessionStore, StoredFrame
from vidplan_server.serving.validation import CheckedCall, check_call
from vidplan_server.serving.worker import PlannerWorker, Slot

log = logging.getLogger(__name__)


class PlannerLike(Protocol):
    """What the service needs of :class:`vidplan_server.planning.planner.Planner`."""

    def plan(self, request: PlanRequest) -> PlanResult: ...
    def info(self) -> dict[str, Any]: ...
    def warmup(self) -> None: ...


@dataclass(frozen=True)
class Prepared:
    """A validated, decoded call and the frames its history may be drawn from."""

    call: PlanCall
    checked: CheckedCall
    pool: list[StoredFrame]  # candidates for the history, the observation itself included
    arrived: float  # server perf_counter (s) when the call arrived
    decode_ms: float


_OUTCOMES: dict[type[ServingError], str] = {
    InvalidArgument: "invalid_argument",
    Overloaded: "overloaded",
    DeadlineExceeded: "deadline_exceeded",
    NoSafePlan: "no_safe_plan",
    Unauthenticated: "unauthenticated",
    Unavailable: "unavailable",
}


def outcome_of(exc: BaseException) -> str:
    """The ``outcome`` label of ``vidplan_requests_total`` for an exception."""
    return _OUTCOMES.get(type(exc), "error")


class PlanService:
    """Sessions, validation and the planner's worker thread; shared by all transports of one server."""

    def __init__(
        self, planner: PlannerLike, config: ServiceConfig = ServiceConfig(), metrics: ServingMetrics | None = None
    ) -> None:
        self.planner = planner
        self.config = config
        self.metrics = metrics if metrics is not None else ServingMetrics()
        self.info: dict[str, Any] = dict(planner.info())
        self.cameras: tuple[str, ...] = tuple(self.info["cameras"])
        self.image_size: tuple[int, int] = (int(self.info["image_size"][0]), int(self.info["image_size"][1]))
        self.history_len = int(self.info["history"])
        self.frame_stride = int(self.info["frame_stride"])
        self.dt_s = float(self.info["dt_s"])
        self.spacing_s = self.frame_stride * self.dt_s  # time between history frames (s)
        self.sessions = SessionStore(
            capacity=config.session_frames,
            ttl_s=config.session_ttl_s,
            max_sessions=config.max_sessions,
            # One spacing more than the history spans, so that the nearest frame to the oldest target survives.
            keep_s=self.history_len * self.spacing_s,
        )
        self.worker = PlannerWorker(config.max_queue, on_depth=self.metrics.queue_depth.set)
        self._decoder = ThreadPoolExecutor(max_workers=config.decode_threads, thread_name_prefix="vidplan-decode")
        self.warmed_up = False
        self.accepting = True
        self._in_flight = 0

    # ------------------------------------------------------------------ life cycle
    def warmup(self) -> None:
        """Run one plan on dummy inputs on the planner thread (blocking); the service is ready afterwards."""
        self.worker.run_blocking(self.planner.warmup)
        self.warmed_up = True
        self.metrics.ready.set(1)

    @property
    def ready(self) -> bool:
        """Model warmed up, not shutting down, and the queue has room."""
        return self.warmed_up and self.accepting and not self.worker.saturated

    @property
    def in_flight(self) -> int:
        """Admitted requests not yet answered."""
        return self._in_flight

    def begin_shutdown(self) -> None:
        """Refuse new requests (Unavailable); requests already admitted go on."""
        self.accepting = False
        self.metrics.ready.set(0)

    async def drain(self, timeout_s: float) -> bool:
        """Wait until no request is in flight; False if ``timeout_s`` ran out first."""
        end = time.monotonic() + timeout_s
        while self._in_flight and time.monotonic() < end:
            await asyncio.sleep(0.01)
        return not self._in_flight

    def close(self) -> None:
        self.begin_shutdown()
        self._decoder.shutdown(wait=False, cancel_futures=True)
        self.worker.shutdown()

    def describe(self) -> dict[str, Any]:
        """The planner's info plus the serving limits (GetInfo, ``GET /v1/info``)."""
        return {
            **self.info,
            "serving": {
                "max_queue": self.config.max_queue,
                "session_ttl_s": self.config.session_ttl_s,
                "max_sessions": self.config.max_sessions,
                "history_spacing_s": self.spacing_s,
            },
        }

    def count(self, transport: str, call: str, outcome: str) -> None:
        self.metrics.requests.labels(transport=transport, call=call, outcome=outcome).inc()

    # ------------------------------------------------------------------ unary
    async def plan(self, call: PlanCall, transport: str = "inprocess") -> PlanReply:
        """Answer one call; raises a :class:`ServingError` subclass on any failure."""
        arrived = time.perf_counter()
        try:
            self._enter()
            try:
                checked = self._check(call)
                with self.worker.reserve() as slot:
                    prepared = await self._prepare(call, checked, arrived)
                    reply = await self._execute(prepared, slot)
            finally:
                self._leave()
        except BaseException as exc:
            error = self._as_serving_error(exc)
            self.count(transport, "plan", outcome_of(error) if error else "cancelled")
            if error is None or error is exc:
                raise
            raise error from exc
        self.count(transport, "plan", "ok")
        return reply

    def open_stream(self, transport: str = "inprocess"):
        """A :class:`~vidplan_server.serving.stream.PlanStream` on this service (one per bidirectional stream)."""
        from vidplan_server.serving.stream import PlanStream

        return PlanStream(self, transport)

    # ------------------------------------------------------------------ steps, shared with PlanStream
    def _check_accepting(self) -> None:
        if not self.accepting:
            raise Unavailable("the server is shutting down")
        if not self.warmed_up:
            raise Unavailable("the model is still warming up")

    def _enter(self) -> None:
        self._check_accepting()
        self._in_flight += 1
        self.metrics.in_flight.set(self._in_flight)

    def _leave(self) -> None:
        self._in_flight -= 1
        self.metrics.in_flight.set(self._in_flight)

    def _check(self, call: PlanCall) -> CheckedCall:
        checked = check_call(call, self.cameras, self.config)
        if call.session_id:
            self.sessions.check(call.session_id, call.sequence, call.observation.timestamp_s)
        return checked

    async def _prepare(self, call: PlanCall, checked: CheckedCall, arrived: float) -> Prepared:
        """Decode the observation and carried history and record the observation in its session.

        The history pool is the carried history when the call has one (any replica can answer it), else the
        session's frames; the observation itself is always in it.
        """
        t = time.perf_counter()
        loop = asyncio.get_running_loop()
        views = [(call.observation.frames, "observation.frames")]
        views += [(past.frames, f"history[{i}].frames") for i, past in enumerate(call.history)]
        decoded = await asyncio.gather(
            *(loop.run_in_executor(self._decoder, self._decode_views, frames, field) for frames, field in views)
        )
        current = StoredFrame(
            frames=decoded[0], timestamp_s=float(call.observation.timestamp_s), sequence=call.sequence
        )
        session_frames = [current]
        if call.session_id:
            session_frames = self.sessions.append(call.session_id, current)
            self.metrics.sessions.set(len(self.sessions))
        if call.history:
            pool = [
                StoredFrame(frames=d, timestamp_s=float(past.timestamp_s), sequence=-1)
                for d, past in zip(decoded[1:], call.history, strict=True)
            ] + [current]
        else:
            pool = session_frames
        return Prepared(call, checked, pool, arrived, (time.perf_counter() - t) * 1000.0)

    def _decode_views(self, frames: Mapping[str, Image], field: str) -> np.ndarray:
        """``(V, h, w, 3)`` uint8 in the model's camera order."""
        return np.stack([decode_image(frames[cam], self.image_size, f"{field}[{cam}]") for cam in self.cameras])

    async def _execute(self, prepared: Prepared, slot: Slot) -> PlanReply:
        call, checked = prepared.call, prepared.checked
        t0_s = float(call.observation.timestamp_s)
        pool = [f for f in prepared.pool if f.timestamp_s <= t0_s]
        picks = select_history([f.timestamp_s for f in pool], t0_s, self.history_len, self.spacing_s)
        history = np.stack([pool[i].frames for i in picks])  # (T, V, h, w, 3) oldest first
        request = PlanRequest(
            instruction=checked.instruction,
            history=history,
            state=checked.state,
            nominal=checked.nominal,
            nominal_space=call.nominal_space,
            options=checked.options,
        )
        deadline_at = None if call.deadline_s is None else prepared.arrived + call.deadline_s
        stamps: dict[str, float] = {"queued": time.perf_counter()}

        def run() -> PlanResult:
            stamps["started"] = time.perf_counter()
            return self._run_plan(request, deadline_at)

        result = await slot.run(run)
        done = time.perf_counter()
        timings = {
            "decode": prepared.decode_ms,
            "queue": (stamps["started"] - stamps["queued"]) * 1000.0,
            "plan": (done - stamps["started"]) * 1000.0,
            "total": (done - prepared.arrived) * 1000.0,
        }
        self.metrics.observe_timings(timings)
        self.metrics.observe_timings({f"planner_{k}": v for k, v in result.timings_ms.items()})
        return PlanReply(
            result=result,
            sequence=call.sequence,
            session_id=call.session_id,
            t0_s=t0_s,
            i0=1,
            dt_s=float(result.dt_s),
            model_version=str(self.info.get("model_version", "")),
            history_timestamps_s=[pool[i].timestamp_s for i in picks],
            timings_ms=timings,
        )

    def _run_plan(self, request: PlanRequest, deadline_at: float | None) -> PlanResult:
        """On the planner thread: refuse if the deadline already passed, else plan within what is left."""
        if deadline_at is not None:
            remaining_s = deadline_at - time.perf_counter() - self.config.deadline_margin_s
            if remaining_s <= 0:
                raise DeadlineExceeded("passed while the request waited for the planner", field="deadline")
            request = replace(request, options=replace(request.options, deadline_s=remaining_s))
        return self.planner.plan(request)

    def _as_serving_error(self, exc: BaseException) -> ServingError | None:
        """The error to report for ``exc``; None for cancellation (the client went away)."""
        if isinstance(exc, ServingError):
            return exc
        if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
            return None
        converted = from_planner_error(exc) if isinstance(exc, Exception) else None
        if converted is not None:
            return converted
        log.exception("plan failed", exc_info=exc)
        return ServingError(f"internal error: {type(exc).__name__}: {exc}")
