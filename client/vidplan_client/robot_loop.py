"""The DROID control loop: observe, ask the server for a chunk, execute it at 15 Hz, hold when there is none.

Every control cycle (``dt_s``, 1/15 s) the loop reads the env's observation and commands exactly one
``cartesian_position`` target:

- while the current chunk has rows left within the open-loop horizon, the row whose target time
  ``t0_s + (i0 + k) * dt_s`` is the next control tick (rows the robot is already past are skipped: a plan that
  took 0.2 s to arrive starts at its 3rd row);
- otherwise it sends a Plan request (the current observation, plus ``history_frames`` earlier observations spaced
  ``frame_stride`` steps apart so any server replica can answer) with a deadline of ``plan_timeout_s``. The answer
  is dropped when its sequence number is not the one just sent (stale or duplicate) or when its rows within the
  horizon are all in the past;
- when there is no usable chunk (late, unreachable, error, dropped), it HOLDS: it commands the pose and gripper it
  just observed. It never goes back to an older chunk, and never executes a row twice.

The loop is synchronous: while a request is in flight nothing new is commanded, and DROID's controller keeps
tracking the last target. ``clock`` and ``sleep`` are injectable so tests run without real time.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import grpc
import numpy as np

from vidplan_client.convert import (
    Plan,
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


class PlanClient(Protocol):
    """What the loop needs of a client (``VidPlanClient`` has it)."""

    def plan(self, request: pb.PlanRequest, timeout_s: float | None = None) -> pb.PlanResponse: ...


@dataclass(frozen=True)
class LoopConfig:
    """Robot loop settings. Times in seconds."""

    instruction: str  # the language task sent with every request
    session_id: str = ""  # "" = a fresh random id per loop
    open_loop_steps: int = 8  # rows of a chunk (counted from its row 0) executed before the next plan
    dt_s: float = 1.0 / 15.0  # control period (DROID: 15 Hz)
    plan_timeout_s: float = 0.5  # deadline of one Plan call; past it the robot holds and asks again
    history_frames: int = 1  # earlier observations sent with each request (the model's T - 1)
    frame_stride: int = 3  # control steps between those observations (the model's frame spacing)
    encoding: str = "jpeg"  # "jpeg", "png" or "raw"
    jpeg_quality: int = 90
    camera_keys: Mapping[str, str] | None = None  # wire camera name -> key in obs["image"] (default: same)
    options: pb.PlanOptions | None = field(default=None, compare=False)  # per-request planner knobs

    def __post_init__(self) -> None:
        if not self.instruction.strip():
            raise ValueError("instruction must not be empty")
        if self.open_loop_steps < 1 or self.dt_s <= 0 or self.plan_timeout_s <= 0:
            raise ValueError("open_loop_steps must be >= 1, dt_s and plan_timeout_s > 0")
        if self.history_frames < 0 or self.frame_stride < 1:
            raise ValueError("history_frames must be >= 0 and frame_stride >= 1")


@dataclass
class StepRecord:
    """What one control cycle did."""

    step: int  # cycle index, from 0
    time_s: float  # loop clock when the cycle's observation was taken
    kind: str  # "chunk": a chunk row was commanded; "hold": the observed pose was commanded
    action: np.ndarray  # (7,) the commanded target
    sequence: int | None = None  # sequence number of the chunk the row came from
    row: int | None = None  # its row index
    reason: str = ""  # why the loop held, or which request it sent, in words


@dataclass
class _Remembered:
    time_s: float
    frame: DroidFrame
    encoded: pb.Observation | None = None


class RobotLoop:
    """Runs :class:`LoopConfig` against a DROID-style env and a plan client."""

    def __init__(self, env: RobotEnvLike, client: PlanClient, config: LoopConfig,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.env, self.client, self.config = env, client, config
        self.clock, self.sleep = clock, sleep
        self.session_id = config.session_id or uuid.uuid4().hex
        self.sequence = 0  # last sequence number sent
        self.records: list[StepRecord] = []
        self._plan: Plan | None = None
        self._last_row = -1  # last executed row of self._plan
        self._memory: list[_Remembered] = []
        self._holding = False

    # -- one cycle --------------------------------------------------------------------------------------------------

    def step(self) -> StepRecord:
        t = self.clock()
        frame = read_observation(self.env.get_observation(), self.config.camera_keys)
        self._remember(t, frame)
        reason = ""
        row = self._next_row(t)
        if row is None:
            reason = self._replan(t)
            fresh = self._plan  # None unless the request just succeeded: an old chunk never comes back
            if fresh is not None:
                row = self._next_row(self.clock())
                if row is None:
                    reason = f"chunk {fresh.sequence} arrived too late: its rows within the horizon have passed"
        if row is None:
            record = StepRecord(len(self.records), t, "hold", frame.hold_action(), reason=reason)
            # Warn once when holding starts, not 15 times a second through an outage.
            log.log(logging.DEBUG if self._holding else logging.WARNING, "holding position: %s", reason)
        else:
            if self._holding:
                log.info("resuming with chunk %d after %d held cycles", self._plan.sequence, self._held_cycles())
            self._last_row = row
            record = StepRecord(len(self.records), t, "chunk", self._plan.chunk[row].copy(), self._plan.sequence, row,
                                reason)
        self.env.update_robot(record.action, action_space=ACTION_SPACE, blocking=False)
        self._holding = record.kind == "hold"
        self.records.append(record)
        return record

    def _held_cycles(self) -> int:
        held = 0
        for record in reversed(self.records):
            if record.kind != "hold":
                break
            held += 1
        return held

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

    # -- chunks ------------------------------------------------------------------------------------------------------

    def _next_row(self, t: float) -> int | None:
        """Row of the current chunk to command at loop time ``t``, or None (no chunk, or horizon used up)."""
        plan = self._plan
        if plan is None:
            return None
        # The target commanded now should be reached at the next tick, t + dt.
        row = math.floor((t + plan.dt_s - plan.t0_s) / plan.dt_s + 0.5) - plan.i0
        row = max(row, self._last_row + 1, 0)
        if row >= min(len(plan.chunk), self.config.open_loop_steps):
            self._plan = None
            return None
        return row

    def _replan(self, t: float) -> str:
        """Send one request; on success make its chunk current. Returns the reason it failed ("" if it did not)."""
        cfg = self.config
        self.sequence += 1
        sequence = self.sequence
        try:
            request = make_request(self.session_id, sequence, cfg.instruction, self._encoded(self._memory[-1]),
                                   history=self._history(t), options=cfg.options)
        except WireError as e:  # a bad observation from the env: hold rather than crash the loop
            return f"observation does not fit the wire: {e}"
        try:
            response = self.client.plan(request, timeout_s=cfg.plan_timeout_s)
        except grpc.RpcError as e:
            code = e.code() if callable(getattr(e, "code", None)) else None
            return f"plan {sequence} failed: {getattr(code, 'name', code)}"
        if response.sequence != sequence or (response.session_id and response.session_id != self.session_id):
            return (f"dropped a response for sequence {response.sequence} of session {response.session_id!r} "
                    f"(waiting for {sequence} of {self.session_id!r})")
        try:
            plan = response_to_plan(response)
        except (PlanFailed, WireError) as e:
            return f"plan {sequence} unusable: {e}"
        self._plan, self._last_row = plan, -1
        return ""

    # -- observations ------------------------------------------------------------------------------------------------

    def _remember(self, t: float, frame: DroidFrame) -> None:
        keep_s = (self.config.history_frames * self.config.frame_stride + 1) * self.config.dt_s
        self._memory = [m for m in self._memory if m.time_s >= t - keep_s] + [_Remembered(t, frame)]

    def _encoded(self, memory: _Remembered) -> pb.Observation:
        if memory.encoded is None:
            f = memory.frame
            state = make_state(f.joint_position, f.cartesian_position, f.gripper_position)
            memory.encoded = make_observation(f.images, state, memory.time_s, self.config.encoding,
                                              self.config.jpeg_quality)
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
