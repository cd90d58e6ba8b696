"""The transport-free plan service: validate, decode, keep sessions, build the history, plan on one thread.

The gRPC servicer and the HTTP app convert wire messages to :class:`PlanCall` and call
:meth:`PlanService.plan` (or :meth:`PlanService.open_stream`); every rule about requests lives here.
Request life cycle and the ``timings_ms`` it reports::

    arrive ─► check every field (nothing stored yet) ─► deadline shorter than the minimum informed pass?
           ─► reserve a queue slot (or Overloaded)
           ─► pick the T history frames by timestamp ─► decode + resize only those          [decode]
           ─► record the observation in its session
           ─► wait for the planner thread, at most until the deadline                      [queue]
           ─► enough time left for an informed pass? ─► planner.plan                       [plan]
           ─► stamp t0, i0, dt, sequence                                                   [total]

Work per request is bounded: images larger than ``max_image_size`` are refused from their headers, carried
history is capped at what the model can use and only the frames it uses are decoded, and the deadline
counts from arrival, decoding included. A call whose deadline passes while it waits, or whose client goes
away, leaves the queue at once (:mod:`.worker`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from vidplan_server.planning.types import ModelInfo, PlanOptions, PlanRequest, PlanResult
from vidplan_server.planning.validation import show
from vidplan_server.serving.batching import BatchItem, PlanBatcher
from vidplan_server.serving.config import ServiceConfig
from vidplan_server.serving.errors import (
    DeadlineExceeded,
    ServingError,
    Unavailable,
    from_planner_error,
    outcome_of,
)
from vidplan_server.serving.history import select_history
from vidplan_server.serving.images import check_image, decode_image
from vidplan_server.serving.logs import RateLimitedLog
from vidplan_server.serving.messages import Image, Observation, PlanCall, PlanReply
from vidplan_server.serving.metrics import ServingMetrics
from vidplan_server.serving.sessions import SessionStore, StoredFrame
from vidplan_server.serving.validation import CheckedCall, Limits, check_call
from vidplan_server.serving.worker import Batched, PlannerWorker, Slot

log = logging.getLogger(__name__)
#: One line per plan request when ServiceConfig.access_log is on.
access_log = logging.getLogger("vidplan_server.serving.access")


class PlannerLike(Protocol):
    """What the service needs of :class:`vidplan_server.planning.planner.Planner`."""

    def plan(self, request: PlanRequest) -> PlanResult: ...
    def info(self) -> ModelInfo: ...
    def warmup(self) -> None: ...


@dataclass(frozen=True)
class Scheduled:
    """A checked call with its budget: when it arrived, when its answer is due and the work it asks for."""

    call: PlanCall
    checked: CheckedCall
    arrived: float  # server perf_counter (s) when the call arrived
    deadline_at: float | None  # server perf_counter (s) by which the answer is due
    effort: tuple[int, int]  # (proposals, flow steps) the plan will use


@dataclass(frozen=True)
class Prepared:
    """A validated, decoded call and its history, ready for the planner."""

    call: PlanCall
    checked: CheckedCall
    history: np.ndarray  # (T, V, h, w, 3) uint8, oldest first, the observation last
    history_timestamps_s: list[float]
    arrived: float  # server perf_counter (s) when the call arrived
    deadline_at: float | None  # server perf_counter (s) by which the answer is due
    effort: tuple[int, int]  # (proposals, flow steps) the plan will use
    decode_ms: float


class InformedPass:
    """The planner's minimum informed pass (encode + propose + rollout + score), learned from its own timings.

    Each stage is normalised by what it grows with (propose and score: the proposals N; rollout: N times the
    flow steps k; encode: neither); a request's estimate is the smallest normalised value of each stage over
    the last ``window`` plans, scaled back to its N and k: a lower bound of what the pass costs, so a request
    refused for it could not have had an informed answer in time. None until a plan has been timed.
    """

    STAGES = ("encode", "propose", "rollout", "score")

    def __init__(self, window: int = 16) -> None:
        self._samples: deque[tuple[float, float, float, float]] = deque(maxlen=window)
        self._lock = threading.Lock()

    def observe(self, timings_ms: Mapping[str, float], proposals: int, flow_steps: int) -> None:
        if not all(stage in timings_ms for stage in self.STAGES):
            return
        n, k = max(proposals, 1), max(flow_steps, 1)
        e, p, r, s = (float(timings_ms[stage]) for stage in self.STAGES)
        with self._lock:
            self._samples.append((e, p / n, r / (n * k), s / n))

    def estimate_ms(self, proposals: int, flow_steps: int) -> float | None:
        """None before the first timed plan, and for 0 proposals (mode "policy": no informed pass)."""
        with self._lock:
            if not self._samples or proposals < 1:
                return None
            e, p, r, s = (min(column) for column in zip(*self._samples, strict=True))
        return e + proposals * (p + s) + proposals * flow_steps * r

    def estimate_batch_ms(self, proposals: list[int], flow_steps: int) -> float | None:
        """The informed pass of one batch of robots with ``proposals`` each: encode and propose per robot, then
        one rollout and one scoring of all; None before the first timed plan."""
        with self._lock:
            if not self._samples:
                return None
            e, p, r, s = (min(column) for column in zip(*self._samples, strict=True))
        total = sum(proposals)
        return len(proposals) * e + total * (p + s) + total * flow_steps * r


class PlanService:
    """Sessions, validation and the planner's worker thread; shared by all transports of one server."""

    def __init__(
        self, planner: PlannerLike, config: ServiceConfig = ServiceConfig(), metrics: ServingMetrics | None = None
    ) -> None:
        self.planner = planner
        self.config = config
        self.metrics = metrics if metrics is not None else ServingMetrics()
        self.model: ModelInfo = planner.info()
        self.metrics.set_build_info(self.model.model_version, str(getattr(planner, "device", "")))
        self.cameras: tuple[str, ...] = tuple(self.model.cameras)
        self.image_size: tuple[int, int] = tuple(self.model.image_size)
        self.history_len = self.model.history
        self.frame_stride = self.model.frame_stride
        self.dt_s = self.model.dt_s
        self.spacing_s = self.model.spacing_s  # time between history frames (s)
        self.limits = Limits.build(config, self.model)
        self.default_effort = (self.model.defaults.num_proposals, self.model.defaults.flow_steps)
        self.sessions = SessionStore(
            capacity=config.session_frames,
            ttl_s=config.session_ttl_s,
            max_sessions=config.max_sessions,
            # One spacing more than the history spans, so that the nearest frame to the oldest target survives.
            keep_s=self.history_len * self.spacing_s,
            max_bytes=config.max_session_bytes,
        )
        self.worker = PlannerWorker(config.max_queue, on_depth=self.metrics.queue_depth.set)
        self.informed_pass = InformedPass()
        self.batcher: PlanBatcher | None = None
        if config.batch_window_s > 0 and config.max_batch >= 2 and PlanBatcher.available(planner):
            self.batcher = PlanBatcher(
                planner,
                config.batch_window_s,
                config.max_batch,
                budget=self._budgeted,
                observe=lambda result, n, k: self.informed_pass.observe(result.timings_ms, n, k),
                estimate_ms=self.informed_pass.estimate_batch_ms,
            )
        self.log = RateLimitedLog(log)
        self.access = RateLimitedLog(access_log)
        self._decoder = ThreadPoolExecutor(max_workers=config.decode_threads, thread_name_prefix="vidplan-decode")
        self.warmed_up = False
        self.accepting = True
        self._in_flight = 0
        # Told of every answered plan, on the event loop, once its reply is ready (the operator dashboard). An
        # observer's on_plan(prepared, reply) must return at once; its errors are logged, never the caller's.
        self.observers: list[Any] = []

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
        for observer in self.observers:
            if hasattr(observer, "close"):
                observer.close()

    def min_deadline_ms(self, proposals: int | None = None, flow_steps: int | None = None) -> float | None:
        """The shortest deadline that can get an informed plan (at the planner's defaults unless given), as
        measured so far; None before the first plan."""
        n, k = self.default_effort
        return self.informed_pass.estimate_ms(proposals or n, flow_steps or k)

    def serving_info(self) -> dict[str, Any]:
        """The serving limits and the measured minimum deadline (GetInfo ``request_limits``, ``/v1/info``
        ``serving``)."""
        min_deadline = self.min_deadline_ms()
        return {
            "max_queue": self.config.max_queue,
            "session_ttl_s": self.config.session_ttl_s,
            "max_sessions": self.config.max_sessions,
            "history_spacing_s": self.spacing_s,
            "min_deadline_ms": None if min_deadline is None else round(min_deadline, 1),
            **self.limits.as_dict(),
        }

    def describe(self) -> dict[str, Any]:
        """The model's info plus the serving limits as JSON (``GET /v1/info``)."""
        return {**self.model.as_dict(), "modes": list(self.limits.modes), "serving": self.serving_info()}

    def count(self, transport: str, call: str, outcome: str) -> None:
        self.metrics.requests.labels(transport=transport, call=call, outcome=outcome).inc()

    def finished(
        self,
        transport: str,
        call: str,
        outcome: str,
        plan_call: PlanCall,
        arrived: float,
        request_id: str | None = None,
    ) -> None:
        """A plan request answered (``outcome`` "ok") or refused: counted, its latency observed when answered, and
        with ``access_log`` one line (request id, session, sequence, transport, outcome, latency; refusals
        rate-limited per transport and outcome, as a client in a loop must not flood the log)."""
        self.count(transport, call, outcome)
        latency_ms = (time.perf_counter() - arrived) * 1000.0
        if outcome == "ok":
            self.metrics.request_seconds.labels(transport=transport, call=call).observe(latency_ms / 1000.0)
        if not self.config.access_log:
            return
        session = show(plan_call.session_id, 64) if plan_call.session_id else ""
        fields = {
            "request_id": request_id or uuid.uuid4().hex[:16],
            "session": session,
            "sequence": int(plan_call.sequence),
            "transport": transport,
            "call": call,
            "outcome": outcome,
            "latency_ms": round(latency_ms, 1),
        }
        message = (
            f"{transport} {call} {outcome} in {latency_ms:.1f} ms: session {session or '-'} sequence "
            f"{plan_call.sequence} request {fields['request_id']}"
        )
        if outcome == "ok":
            access_log.info(message, extra=fields)
        else:
            self.access.log(logging.INFO, (transport, call, outcome), message, extra=fields)

    # ------------------------------------------------------------------ unary
    async def plan(self, call: PlanCall, transport: str = "inprocess") -> PlanReply:
        """Answer one call; raises a :class:`ServingError` subclass on any failure."""
        arrived = time.perf_counter()
        try:
            checked = self.check(call)
            scheduled = self.schedule(call, checked, arrived)
            with self.admission() as slot:
                prepared = await self.prepare(scheduled)
                reply = await self.execute(prepared, slot)
        except BaseException as exc:
            error = self.serving_error(exc)
            self.finished(transport, "plan", outcome_of(error) if error else "cancelled", call, arrived)
            if error is None or error is exc:
                raise
            raise error from exc
        self.finished(transport, "plan", "ok", call, arrived)
        return reply

    def open_stream(self, transport: str = "inprocess"):
        """A :class:`~vidplan_server.serving.stream.PlanStream` on this service (one per bidirectional stream)."""
        from vidplan_server.serving.stream import PlanStream

        return PlanStream(self, transport)

    # ------------------------------------------------------------------ the pipeline, shared with PlanStream
    # check -> schedule -> admission (in flight, a queue slot) -> prepare (decode, session) -> execute (plan)

    def check(self, call: PlanCall) -> CheckedCall:
        """Accepting calls? Then every field and the session's order; nothing is stored. Raises a ServingError."""
        self._check_accepting()
        checked = check_call(call, self.limits)
        if call.session_id:
            self.sessions.check(call.session_id, call.sequence, call.observation.timestamp_s)
        return checked

    def schedule(self, call: PlanCall, checked: CheckedCall, arrived: float) -> Scheduled:
        """The work the call asks for and when its answer is due; refuses at once a budget shorter than the
        planner's minimum informed pass (DeadlineExceeded)."""
        effort = self._effort(checked.options)
        return Scheduled(call, checked, arrived, self._deadline_at(call, arrived, effort), effort)

    @contextmanager
    def admission(self) -> Iterator[Slot]:
        """A planner queue slot (Overloaded when the queue is full), counted in flight until the block ends."""
        self._check_accepting()
        self._in_flight += 1
        self.metrics.in_flight.set(self._in_flight)
        try:
            with self.worker.reserve() as slot:
                yield slot
        finally:
            self._in_flight -= 1
            self.metrics.in_flight.set(self._in_flight)

    async def prepare(self, scheduled: Scheduled) -> Prepared:
        """Decode what the model will see and record the observation in its session, within the deadline."""
        if scheduled.deadline_at is None:
            return await self._decode(scheduled)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(loop.time() + (scheduled.deadline_at - time.perf_counter())):
                return await self._decode(scheduled)
        except TimeoutError:
            raise DeadlineExceeded("passed while the request's images were decoded", field="deadline") from None

    def serving_error(self, exc: BaseException) -> ServingError | None:
        """The error to report for ``exc``; None for cancellation (the client went away)."""
        if isinstance(exc, ServingError):
            return exc
        if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
            return None
        converted = from_planner_error(exc) if isinstance(exc, Exception) else None
        if converted is not None:
            return converted
        self.log.log(logging.ERROR, "internal", f"plan failed: {type(exc).__name__}: {str(exc)[:300]}", exc_info=exc)
        return ServingError(f"internal error: {type(exc).__name__}")

    # ------------------------------------------------------------------ the pipeline's parts
    def _check_accepting(self) -> None:
        if not self.accepting:
            raise Unavailable("the server is shutting down")
        if not self.warmed_up:
            raise Unavailable("the model is still warming up")

    def _effort(self, options: PlanOptions) -> tuple[int, int]:
        """(proposals, flow steps) of the informed pass the plan runs; (0, 0) in mode "policy", which runs none."""
        if options.mode == "policy":
            return (0, 0)
        n, k = self.default_effort
        return (options.num_proposals or n, options.flow_steps or k)

    def _deadline_at(self, call: PlanCall, arrived: float, effort: tuple[int, int]) -> float | None:
        """When the answer is due (perf_counter s); refuses at once a budget shorter than the informed pass."""
        if call.deadline_s is None:
            return None
        need_ms = self.informed_pass.estimate_ms(*effort)
        if need_ms is not None and call.deadline_s * 1000.0 < need_ms:
            raise DeadlineExceeded(
                f"a budget of {call.deadline_s * 1000.0:.0f} ms is shorter than the planner's minimum informed pass "
                f"(about {need_ms:.0f} ms for {effort[0]} proposals and {effort[1]} flow step(s): encode + propose + "
                "rollout + score); ask for more time or fewer proposals",
                field="deadline",
            )
        return arrived + call.deadline_s

    async def _decode(self, scheduled: Scheduled) -> Prepared:
        """The history pool is the carried history when the call has one (any replica can answer it), else the
        session's frames; the observation itself is always in it. Only the T frames picked from it are decoded
        (carried observations the model does not use are checked from their headers only), and the observation
        joins its session only after all of that passed."""
        call = scheduled.call
        t = time.perf_counter()
        loop = asyncio.get_running_loop()
        t0_s = float(call.observation.timestamp_s)

        def run(fn, *args):
            return loop.run_in_executor(self._decoder, fn, *args)

        if call.history:
            times = [float(past.timestamp_s) for past in call.history] + [t0_s]
            picks = select_history(times, t0_s, self.history_len, self.spacing_s)
            observations: list[Observation] = [*call.history, call.observation]
            fields = [f"history[{i}].frames" for i in range(len(call.history))] + ["observation.frames"]
            used = sorted(set(picks))
            unused = [i for i in range(len(observations)) if i not in set(used)]
            jobs = [run(self._decode_views, observations[i].frames, fields[i]) for i in used]
            jobs.append(run(self._check_views, [(observations[i].frames, fields[i]) for i in unused]))
            *decoded, _ = await asyncio.gather(*jobs)
            by_index = dict(zip(used, decoded, strict=True))
            current_frames = by_index[len(observations) - 1]
            pool = [StoredFrame(by_index[i], times[i], -1) for i in picks]
            picks = list(range(len(pool)))
        else:
            current_frames = await run(self._decode_views, call.observation.frames, "observation.frames")
        current = StoredFrame(frames=current_frames, timestamp_s=t0_s, sequence=call.sequence)
        session_frames = [current]
        if call.session_id:
            session_frames = self.sessions.append(call.session_id, current)
            self.metrics.sessions.set(len(self.sessions))
            self.metrics.session_bytes.set(self.sessions.nbytes)
        if not call.history:
            pool = [f for f in session_frames if f.timestamp_s <= t0_s]
            picks = select_history([f.timestamp_s for f in pool], t0_s, self.history_len, self.spacing_s)
        return Prepared(
            call=call,
            checked=scheduled.checked,
            history=np.stack([pool[i].frames for i in picks]),
            history_timestamps_s=[pool[i].timestamp_s for i in picks],
            arrived=scheduled.arrived,
            deadline_at=scheduled.deadline_at,
            effort=scheduled.effort,
            decode_ms=(time.perf_counter() - t) * 1000.0,
        )

    def _decode_views(self, frames: Mapping[str, Image], field: str) -> np.ndarray:
        """``(V, h, w, 3)`` uint8 in the model's camera order."""
        size = self.config.max_image_size
        return np.stack([decode_image(frames[cam], self.image_size, f"{field}[{cam}]", size) for cam in self.cameras])

    def _check_views(self, views: Sequence[tuple[Mapping[str, Image], str]]) -> None:
        for frames, field in views:
            for cam in self.cameras:
                check_image(frames[cam], f"{field}[{cam}]", self.config.max_image_size)

    async def execute(self, prepared: Prepared, slot: Slot) -> PlanReply:
        """Plan on the planner thread through ``slot`` (an :meth:`admission`'s), within the deadline; the reply
        is stamped (t0, i0, dt, sequence) and timed."""
        call, checked = prepared.call, prepared.checked
        request = PlanRequest(
            instruction=checked.instruction,
            history=prepared.history,
            state=checked.state,
            nominal=checked.nominal,
            nominal_space=call.nominal_space,
            options=checked.options,
            reference=checked.reference,
        )
        deadline_at = prepared.deadline_at
        stamps: dict[str, float] = {"queued": time.perf_counter()}
        if deadline_at is not None and deadline_at <= stamps["queued"]:
            raise DeadlineExceeded("passed before the request reached the planner's queue", field="deadline")

        def run() -> PlanResult:
            stamps["started"] = time.perf_counter()
            return self._run_plan(request, deadline_at, prepared.effort)

        def expired() -> DeadlineExceeded:
            waited_ms = (time.perf_counter() - stamps["queued"]) * 1000.0
            return DeadlineExceeded(
                f"passed while the request waited for the planner ({waited_ms:.0f} ms in the "
                "queue); it left the queue unplanned",
                field="deadline",
            )

        key = self.batcher.key(request) if self.batcher is not None else None
        if key is None:
            result = await slot.run(run, deadline_at, expired)
        else:  # may be planned with other robots' calls (batching.py)
            item = BatchItem(request, deadline_at, prepared.effort, key, stamps)
            result = await slot.run(run, deadline_at, expired, batch=Batched(self.batcher, item))
        done = time.perf_counter()
        timings = {
            "decode": prepared.decode_ms,
            "queue": (stamps["started"] - stamps["queued"]) * 1000.0,
            "plan": (done - stamps["started"]) * 1000.0,
            "total": (done - prepared.arrived) * 1000.0,
        }
        self.metrics.observe_timings(timings)
        self.metrics.observe_planner_timings(result.timings_ms)
        reply = PlanReply(
            result=result,
            sequence=call.sequence,
            session_id=call.session_id,
            t0_s=float(call.observation.timestamp_s),
            i0=1,
            dt_s=float(result.dt_s),
            model_version=self.model.model_version,
            history_timestamps_s=prepared.history_timestamps_s,
            timings_ms=timings,
        )
        for observer in self.observers:
            try:
                observer.on_plan(prepared, reply)
            except Exception as exc:  # noqa: BLE001 - watching a plan must never fail it
                self.log.log(logging.ERROR, "observer", f"plan observer failed: {type(exc).__name__}: {exc}")
        return reply

    def _run_plan(self, request: PlanRequest, deadline_at: float | None, effort: tuple[int, int]) -> PlanResult:
        """On the planner thread: refuse if the deadline leaves no time for an informed pass, else plan within
        what is left."""
        result = self.planner.plan(self._budgeted(request, deadline_at, effort))
        self.informed_pass.observe(result.timings_ms, *effort)
        return result

    def _budgeted(self, request: PlanRequest, deadline_at: float | None, effort: tuple[int, int]) -> PlanRequest:
        """The request with what is left of its deadline as the planner's budget; DeadlineExceeded when that is
        less than the minimum informed pass."""
        if deadline_at is not None:
            remaining_s = deadline_at - time.perf_counter() - self.config.deadline_margin_s
            if remaining_s <= 0:
                raise DeadlineExceeded("passed while the request waited for the planner", field="deadline")
            need_ms = self.informed_pass.estimate_ms(*effort)
            if need_ms is not None and remaining_s * 1000.0 < need_ms:
                raise DeadlineExceeded(
                    f"{remaining_s * 1000.0:.0f} ms were left when the planner reached the request, less than its "
                    f"minimum informed pass (about {need_ms:.0f} ms: encode + propose + rollout + score)",
                    field="deadline",
                )
            request = replace(request, options=replace(request.options, deadline_s=remaining_s))
        return request
