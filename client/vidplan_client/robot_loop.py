"""The DROID control loop: a command every 15 Hz cycle, plans requested in the background, hold when there is none.

Every control cycle (``dt_s``, 1/15 s) the loop reads the env's observation and commands exactly one
``cartesian_position`` target. Planning never blocks a cycle: one Plan request at a time runs on a worker thread
(or any injected executor) while the robot executes the current chunk. Each cycle:

1. **collect**: if the request in flight has finished, its chunk becomes current (replacing the one being executed,
   mid-chunk if need be) unless it is dropped: an RPC error, an error response, a sequence number other than the
   one in flight (stale or duplicate) or another session's id, or a chunk whose rows within the open-loop horizon
   are all in the past ("arrived too late");
2. **send**: with nothing in flight, the next request (this cycle's observation, plus ``history_frames`` earlier
   observations ``frame_stride`` steps apart so any server replica can answer; deadline ``plan_timeout_s``) goes out
   when there is no usable chunk, or when the current chunk's remaining rows would run out before an answer could
   be back: when at most ``lead_steps`` rows remain after this cycle's. By default ``lead_steps`` follows the
   measured latency (the slowest of the last few answers, in control periods, minus one), so a fast server is asked
   once per chunk and a slow one always has a request in flight. A request whose answer is already there (an
   in-process planner) is collected in the same cycle;
3. **command**: the row of the current chunk whose target time ``t0_s + (i0 + k) * dt_s`` is the next control tick
   (rows the robot is already past are skipped: a plan that took 0.2 s starts at its 3rd row; no row runs twice),
   within the open-loop horizon (rows ``0 .. open_loop_steps - 1`` of any chunk, counted by row index);
   otherwise it HOLDS: it commands the last target it commanded, pose and gripper (so a grasp stays closed and a
   sagging arm is pulled back, not followed down); only before its first command does it hold the pose and gripper
   it observes. A chunk whose horizon is used up is discarded, so an old chunk never comes back, whatever the server
   does (late, erroring, unreachable).

**Step limits.** The server guarantees a chunk's steps only when it is followed from its row 0 (each step at most
``max_translation_per_step_m`` and ``max_rotation_per_step_rad``, step 0 from the pose observed at ``t0_s``); the
loop skips past rows and switches chunks mid-execution, so it checks every command itself, against the last
commanded target (the observed pose before the first command): translation is the norm of the xyz change, rotation
the geodesic angle between the two extrinsic-XYZ orientations. When the row for now is too far, the loop commands
the latest row between the lowest it may still run (row 0 of a fresh chunk, else the row after the last one
executed) and the row for now that is within both limits, and from then on runs that chunk late by as many rows
(the next cycle takes the following row, not the row for now again). When no such row exists, the chunk is dropped
and the loop holds (the reason names the distance and the limit). The defaults are DROID's limits; a deployment can
set them from ``GetInfo``'s ``limits`` (``max_translation_per_step_m``, ``max_rotation_per_step_rad``).

Which row of which chunk to command (steps 1 and 3, the step limits) is :class:`~vidplan_client.chunks.ChunkScheduler`,
pure and tested on its own; this loop adds the env, the requests and the records.

``clock`` and ``sleep`` are injectable and so is ``executor`` (``submit(fn, *args, **kwargs)`` returning an object
with ``done()`` and ``result()``), so tests run deterministically without real time or threads. Every request,
answer and cycle is recorded (:attr:`RobotLoop.plans`, :attr:`RobotLoop.records`).
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
import numpy as np

from vidplan_client.chunks import ChunkScheduler
from vidplan_client.contract import DT_S, MAX_ROTATION_PER_STEP_RAD, MAX_TRANSLATION_PER_STEP_M
from vidplan_client.convert import (
    PlanFailed,
    WireError,
    make_observation,
    make_request,
    make_state,
    response_to_plan,
)
from vidplan_client.droid import ACTION_SPACE, DroidFrame, RobotEnvLike, read_observation
from vidplan_client.wire import vidplan_pb2 as pb

log = logging.getLogger(__name__)

_LATENCY_WINDOW = 3  # answers whose latency sets the automatic lead


class PlanClient(Protocol):
    """What the loop needs of a client (``VidPlanClient`` has it). Called from the loop's worker thread."""

    def plan(self, request: pb.PlanRequest, timeout_s: float | None = None) -> pb.PlanResponse: ...


@dataclass(frozen=True)
class LoopConfig:
    """Robot loop settings. Times in seconds of the loop's clock."""

    instruction: str  # the language task sent with every request
    session_id: str = ""  # "" = a fresh random id per loop
    open_loop_steps: int = 8  # rows of a chunk (counted from its row 0) that may be executed at most
    dt_s: float = DT_S  # control period (DROID: 15 Hz)
    plan_timeout_s: float = 0.5  # deadline of one Plan call; the robot keeps executing or holding meanwhile
    lead_steps: int | None = None  # send the next request when <= this many rows remain; None: from latency
    history_frames: int = 1  # earlier observations sent with each request (the model's T - 1)
    frame_stride: int = 3  # control steps between those observations (the model's frame spacing)
    encoding: str = "jpeg"  # "jpeg", "png" or "raw"
    jpeg_quality: int = 90
    camera_keys: Mapping[str, str] | None = None  # wire camera name -> key in obs["image"] (default: same)
    options: pb.PlanOptions | None = field(default=None, compare=False)  # per-request planner knobs
    # Largest step from the last commanded target to the next one (DROID's limits; GetInfo's `limits` has the
    # server's): translation of the TCP in m, geodesic rotation in rad.
    max_translation_per_step_m: float = MAX_TRANSLATION_PER_STEP_M
    max_rotation_per_step_rad: float = MAX_ROTATION_PER_STEP_RAD

    def __post_init__(self) -> None:
        if not self.instruction.strip():
            raise ValueError("instruction must not be empty")
        if self.open_loop_steps < 1 or self.dt_s <= 0 or self.plan_timeout_s <= 0:
            raise ValueError("open_loop_steps must be >= 1, dt_s and plan_timeout_s > 0")
        if self.lead_steps is not None and self.lead_steps < -1:
            raise ValueError("lead_steps must be >= -1 (-1: only when the chunk is used up) or None")
        if self.history_frames < 0 or self.frame_stride < 1:
            raise ValueError("history_frames must be >= 0 and frame_stride >= 1")
        if not (self.max_translation_per_step_m > 0 and self.max_rotation_per_step_rad > 0):
            raise ValueError("max_translation_per_step_m and max_rotation_per_step_rad must be > 0")

    @classmethod
    def for_server(cls, info: pb.InfoResponse, instruction: str, **settings: Any) -> LoopConfig:
        """Settings that follow a server's GetInfo: its control period, the history its model sees (T - 1 earlier
        observations, ``frame_stride`` steps apart) and its per-step limits; what it leaves unset keeps the
        contract's defaults (:mod:`vidplan_client.contract`). ``settings`` set any other field, or override."""
        derived = {
            "dt_s": info.dt_s or DT_S,
            "history_frames": max(int(info.history) - 1, 0),
            "frame_stride": int(info.frame_stride) or cls.frame_stride,
            "max_translation_per_step_m": info.limits.max_translation_per_step_m or MAX_TRANSLATION_PER_STEP_M,
            "max_rotation_per_step_rad": info.limits.max_rotation_per_step_rad or MAX_ROTATION_PER_STEP_RAD,
        }
        return cls(instruction=instruction, **{**derived, **settings})


@dataclass
class StepRecord:
    """What one control cycle did."""

    step: int  # cycle index, from 0
    time_s: float  # loop clock when the cycle's observation was taken
    kind: str  # "chunk": a chunk row was commanded; "hold": the last commanded target (or observed pose) was
    action: np.ndarray  # (7,) the commanded target
    sequence: int | None = None  # sequence number of the chunk the row came from
    row: int | None = None  # its row index
    reason: str = ""  # why the loop held, in words
    sent: int | None = None  # sequence number of the request sent in this cycle, if one was


@dataclass
class PlanRecord:
    """One request and what became of it."""

    sequence: int
    sent_s: float  # loop clock when it was sent (its observation's timestamp)
    received_s: float | None = None  # loop clock of the cycle that collected the answer or the failure
    outcome: str = "in flight"  # "used", "dropped" (answered, but not usable) or "failed" (no answer)
    reason: str = ""  # why it was dropped or failed

    @property
    def latency_s(self) -> float | None:
        """Time from sending to the cycle that collected it (a multiple of the control period, about)."""
        return None if self.received_s is None else self.received_s - self.sent_s


@dataclass
class _Remembered:
    time_s: float
    frame: DroidFrame
    encoded: pb.Observation | None = None


@dataclass
class _InFlight:
    record: PlanRecord
    future: Any  # concurrent.futures.Future-like: done(), result()


class RobotLoop:
    """Runs :class:`LoopConfig` against a DROID-style env and a plan client. Call :meth:`close` when done."""

    def __init__(
        self,
        env: RobotEnvLike,
        client: PlanClient,
        config: LoopConfig,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        executor: Executor | None = None,
    ) -> None:
        self.env, self.client, self.config = env, client, config
        self.clock, self.sleep = clock, sleep
        self.session_id = config.session_id or uuid.uuid4().hex
        self.sequence = 0  # last sequence number sent
        self.records: list[StepRecord] = []
        self.plans: list[PlanRecord] = []  # every request, in the order sent
        self.latest_response: pb.PlanResponse | None = None  # the answer whose chunk became current last
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="vidplan-plan")
        self._in_flight: _InFlight | None = None
        # The current chunk, its rows and the step limits: which row to command when (pure, tested on its own).
        self.chunks = ChunkScheduler(
            config.open_loop_steps, config.max_translation_per_step_m, config.max_rotation_per_step_rad
        )
        self._plan_record: PlanRecord | None = None  # the request the current chunk answers
        self._target: np.ndarray | None = None  # (7,) the last chunk row commanded; what a hold commands
        self._latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self._problem = ""  # why the last request brought no chunk; cleared by the next chunk
        self._memory: list[_Remembered] = []
        self._holding = False

    # -- one cycle --------------------------------------------------------------------------------------------------

    def step(self) -> StepRecord:
        t = self.clock()
        frame = read_observation(self.env.get_observation(), self.config.camera_keys)
        self._remember(t, frame)
        # Steps are measured from the last commanded target; before the first command, from where the robot is.
        reference = frame.hold_action() if self._target is None else self._target
        self._collect(t)
        self._select_row(t, reference)  # drops a chunk it cannot use now, so its successor is asked for this cycle
        sent = self._maybe_send(t)
        if sent is not None:
            self._collect(t)  # an answer that is already there (an in-process planner) serves this very cycle
        row = self._select_row(t, reference)
        if row is None:
            reason = self._hold_reason(t)
            record = StepRecord(len(self.records), t, "hold", reference.copy(), reason=reason, sent=sent)
            # Warn once when holding starts, not 15 times a second through an outage.
            log.log(logging.DEBUG if self._holding else logging.WARNING, "holding position: %s", reason)
        else:
            sequence = self.chunks.plan.sequence
            if self._holding:
                log.info("resuming with chunk %d after %d held cycles", sequence, self._held_cycles())
            record = StepRecord(len(self.records), t, "chunk", self.chunks.commit(row).copy(), sequence, row, sent=sent)
            self._target = record.action.copy()
        self.env.update_robot(record.action, action_space=ACTION_SPACE, blocking=False)
        self._holding = record.kind == "hold"
        self.records.append(record)
        return record

    def run(self, num_steps: int) -> list[StepRecord]:
        """``num_steps`` cycles at ``dt_s``; a cycle that overruns is not made up for (no bursts)."""
        records = []
        next_tick = self.clock()
        for _ in range(num_steps):
            records.append(self.step())
            next_tick += self.config.dt_s
            delay = next_tick - self.clock()
            if delay > 0:
                self.sleep(delay)
            else:
                next_tick = self.clock()
        return records

    def close(self) -> None:
        """Stop the worker thread (a request still in flight is abandoned; its deadline ends it)."""
        if self._own_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> RobotLoop:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def lead_steps(self) -> int:
        """Rows left in the current chunk at or below which the next request is sent (-1: when it is used up)."""
        if self.config.lead_steps is not None:
            return self.config.lead_steps
        if not self._latencies:
            return -1
        # An answer that takes c cycles must leave when c - 1 rows remain after this one to arrive as they run out.
        cycles = math.ceil(max(self._latencies) / self.config.dt_s - 0.01)
        return max(cycles - 1, -1)

    def _held_cycles(self) -> int:
        held = 0
        for record in reversed(self.records):
            if record.kind != "hold":
                break
            held += 1
        return held

    def _hold_reason(self, t: float) -> str:
        parts = [self._problem] if self._problem else []
        if self._in_flight is not None:
            r = self._in_flight.record
            parts.append(f"waiting for plan {r.sequence} (in flight for {1000 * (t - r.sent_s):.0f} ms)")
        return "; ".join(parts) or "no plan"

    # -- chunks ------------------------------------------------------------------------------------------------------

    def _select_row(self, t: float, reference: np.ndarray) -> int | None:
        """The scheduler's row for now (None: hold); a chunk it discards or drops says why in the hold reason, and
        an answer none of whose rows could run is recorded as dropped."""
        selection = self.chunks.select(t, reference)
        if selection.row is None and selection.reason:
            if not selection.dropped:  # used up: the reason of an earlier problem, if any, stays the one shown
                self._problem = self._problem or selection.reason
            else:
                if selection.unused and self._plan_record is not None:
                    self._plan_record.outcome, self._plan_record.reason = "dropped", selection.reason
                self._problem = selection.reason
        return selection.row

    # -- requests ----------------------------------------------------------------------------------------------------

    def _maybe_send(self, t: float) -> int | None:
        """Send the next request if it is time; returns its sequence number."""
        if self._in_flight is not None:
            return None
        left = self.chunks.rows_left(t)
        if left is not None and left > self.lead_steps:
            return None
        return self._send(t)

    def _send(self, t: float) -> int | None:
        cfg = self.config
        self.sequence += 1
        record = PlanRecord(self.sequence, t)
        self.plans.append(record)
        try:
            request = make_request(
                self.session_id,
                record.sequence,
                cfg.instruction,
                self._encoded(self._memory[-1]),
                history=self._history(t),
                options=cfg.options,
                reference=self.chunks.unexecuted(t),
            )
        except WireError as e:  # a bad observation from the env: hold rather than crash the loop
            self._finish(record, t, "failed", f"observation does not fit the wire: {e}")
            return None
        future = self._executor.submit(self.client.plan, request, timeout_s=cfg.plan_timeout_s)
        self._in_flight = _InFlight(record, future)
        return record.sequence

    def _collect(self, t: float) -> None:
        """If the request in flight has finished: make its chunk current, or record why not."""
        flight = self._in_flight
        if flight is None or not flight.future.done():
            return
        self._in_flight = None
        record, sequence = flight.record, flight.record.sequence
        try:
            response = flight.future.result()
        except grpc.RpcError as e:
            code = e.code() if callable(getattr(e, "code", None)) else None
            self._finish(record, t, "failed", f"plan {sequence} failed: {getattr(code, 'name', code)}")
            return
        except Exception as e:  # a client bug must not stop a moving robot: hold, and say why loudly
            log.exception("plan %d raised", sequence)
            self._finish(record, t, "failed", f"plan {sequence} raised {type(e).__name__}: {e}")
            return
        self._latencies.append(t - record.sent_s)
        if response.sequence != sequence or (response.session_id and response.session_id != self.session_id):
            self._finish(
                record,
                t,
                "dropped",
                f"dropped a response for sequence {response.sequence} of session {response.session_id!r} "
                f"(waiting for {sequence} of {self.session_id!r})",
            )
            return
        try:
            plan = response_to_plan(response)
        except (PlanFailed, WireError) as e:
            self._finish(record, t, "dropped", f"plan {sequence} unusable: {e}")
            return
        too_late = self.chunks.offer(plan, t)
        if too_late is not None:
            self._finish(record, t, "dropped", too_late)
            return
        self._plan_record = record
        self.latest_response = response
        self._finish(record, t, "used", "")

    def _finish(self, record: PlanRecord, t: float, outcome: str, reason: str) -> None:
        record.received_s, record.outcome, record.reason = t, outcome, reason
        self._problem = reason
        if reason:
            log.debug(reason)

    # -- observations ------------------------------------------------------------------------------------------------

    def _remember(self, t: float, frame: DroidFrame) -> None:
        keep_s = (self.config.history_frames * self.config.frame_stride + 1) * self.config.dt_s
        self._memory = [m for m in self._memory if m.time_s >= t - keep_s] + [_Remembered(t, frame)]

    def _encoded(self, memory: _Remembered) -> pb.Observation:
        if memory.encoded is None:
            f = memory.frame
            state = make_state(f.joint_position, f.cartesian_position, f.gripper_position)
            memory.encoded = make_observation(
                f.images, state, memory.time_s, self.config.encoding, self.config.jpeg_quality
            )
        return memory.encoded

    def _history(self, t: float) -> list[pb.Observation]:
        """Earlier observations ``frame_stride`` steps apart, oldest first; [] unless every one was observed."""
        cfg, out = self.config, []
        earlier = self._memory[:-1]
        for j in range(cfg.history_frames, 0, -1):
            target = t - j * cfg.frame_stride * cfg.dt_s
            best = min(earlier, key=lambda m: abs(m.time_s - target), default=None)
            if best is None or abs(best.time_s - target) > cfg.dt_s / 2:
                return []  # the server's own session history is better than a gappy one
            out.append(self._encoded(best))
        return out
