"""Which row of which action chunk to command now: the robot loop's chunk scheduler, pure (no env, no client, no
threads), like openpi's ``ActionChunkBroker``.

A chunk (:class:`~vidplan_client.convert.Plan`) is stamped: row ``k`` is the target for robot time
``t0_s + (i0 + k) * dt_s``. The scheduler holds the current chunk and answers, for a loop time ``t`` and the last
commanded target:

- :meth:`ChunkScheduler.offer`: take a new chunk, unless every row within its open-loop horizon is already in
  the past ("arrived too late"); a newer chunk replaces the current one mid-execution;
- :meth:`ChunkScheduler.select`: the row to command now, the row whose time is the next control tick, never a row
  twice and only rows ``0 .. open_loop_steps - 1``; when that row is out of reach of the last commanded target
  (per-step limits: translation of the xyz change, geodesic rotation), the latest reachable row between the
  lowest one allowed and it, after which the chunk runs that many rows late; no reachable row drops the chunk,
  a used-up horizon discards it. ``None`` means hold;
- :meth:`ChunkScheduler.rows_left`: rows of the current chunk left after the one for now, which decides when
  the next request goes out;
- :meth:`ChunkScheduler.unexecuted`: the rows of the last commanded chunk (current or just used up) after the last
  commanded row whose time has not passed, which the next request sends as its ``reference`` (the server's policy
  samples continue them); none once they are all in the past (after a hold, say).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from vidplan_client.contract import MAX_ROTATION_PER_STEP_RAD, MAX_TRANSLATION_PER_STEP_M
from vidplan_client.convert import Plan
from vidplan_client.droid import pose_step

log = logging.getLogger(__name__)

LIMIT_SLACK = 1e-6  # numerical slack on the step limits (the server's check allows the same)


@dataclass(frozen=True)
class Selection:
    """What :meth:`ChunkScheduler.select` decided: a row of the current chunk, or why there is none."""

    row: int | None  # the row to command; None: hold
    reason: str = ""  # why there is no row, when the chunk was just discarded or dropped
    dropped: bool = False  # the chunk was dropped as out of reach (not merely used up)
    unused: bool = False  # ... before any of its rows ran


class ChunkScheduler:
    """The current chunk and the rows it may still run. Times are the loop clock's seconds."""

    def __init__(
        self,
        open_loop_steps: int = 8,
        max_translation_per_step_m: float = MAX_TRANSLATION_PER_STEP_M,
        max_rotation_per_step_rad: float = MAX_ROTATION_PER_STEP_RAD,
    ) -> None:
        if open_loop_steps < 1:
            raise ValueError("open_loop_steps must be >= 1")
        self.open_loop_steps = open_loop_steps
        self.max_translation_per_step_m = max_translation_per_step_m
        self.max_rotation_per_step_rad = max_rotation_per_step_rad
        self.plan: Plan | None = None  # the current chunk
        self.last_row = -1  # its last executed row
        self.lag = 0  # rows it runs behind its time stamps (to stay within the step limits)
        self._commanded: tuple[Plan, int, int] | None = None  # (chunk, row, lag) of the last command

    def horizon(self, plan: Plan) -> int:
        """Rows of ``plan`` that may run: the open-loop horizon, or fewer in a shorter chunk."""
        return min(len(plan.chunk), self.open_loop_steps)

    def row_for(self, plan: Plan, t: float, last_row: int = -1, lag: int = 0) -> int | None:
        """Row of ``plan`` to command at loop time ``t`` after ``last_row`` when it runs ``lag`` rows late, or None
        once its horizon is used up. Time only: the step limits are :meth:`select`'s."""
        # The target commanded now should be reached at the next tick, t + dt.
        row = math.floor((t + plan.dt_s - plan.t0_s) / plan.dt_s + 0.5) - plan.i0 - lag
        row = max(row, last_row + 1, 0)
        return row if row < self.horizon(plan) else None

    def offer(self, plan: Plan, t: float) -> str | None:
        """Make ``plan`` current; returns why not (its rows within the horizon have passed), else None."""
        if self.row_for(plan, t) is None:
            return f"chunk {plan.sequence} arrived too late: its rows within the horizon have passed"
        if self.plan is not None:
            log.debug("chunk %d replaces chunk %d after row %d", plan.sequence, self.plan.sequence, self.last_row)
        self.plan, self.last_row, self.lag = plan, -1, 0
        return None

    def within_limits(self, reference: np.ndarray, target: np.ndarray) -> bool:
        translation, rotation = pose_step(reference, target)
        return (
            translation <= self.max_translation_per_step_m + LIMIT_SLACK
            and rotation <= self.max_rotation_per_step_rad + LIMIT_SLACK
        )

    def select(self, t: float, reference: np.ndarray) -> Selection:
        """Row of the current chunk to command now, a step within the limits from ``reference`` (the last
        commanded target, or the observed pose before the first command).

        Discards the chunk when its horizon is used up or when none of the rows it may still run is within reach;
        makes it run late when only a row earlier than the one for now is. Calling it again at the same time gives
        the same row.
        """
        plan = self.plan
        if plan is None:
            return Selection(None)
        row = self.row_for(plan, t, self.last_row, self.lag)
        if row is None:  # horizon used up: this chunk is never looked at again
            self.plan = None
            return Selection(None, f"chunk {plan.sequence} used up its open-loop horizon")
        lowest = self.last_row + 1  # row 0 of a fresh chunk; a row never runs twice
        for candidate in range(row, lowest - 1, -1):
            if self.within_limits(reference, plan.chunk[candidate]):
                if candidate < row:
                    self.lag += row - candidate
                    log.warning(
                        "chunk %d: row %d is out of reach of the last commanded target; running row %d, %d rows late",
                        plan.sequence,
                        row,
                        candidate,
                        self.lag,
                    )
                return Selection(candidate)
        translation, rotation = pose_step(reference, plan.chunk[lowest])
        reason = (
            f"dropped chunk {plan.sequence}: rows {lowest}..{row} are all out of reach of the last commanded "
            f"target (row {lowest} is {translation:.3f} m and {rotation:.3f} rad away; limits "
            f"{self.max_translation_per_step_m} m and {self.max_rotation_per_step_rad} rad per step)"
        )
        log.warning(reason)
        self.plan = None
        return Selection(None, reason, dropped=True, unused=self.last_row < 0)

    def commit(self, row: int) -> np.ndarray:
        """Row ``row`` of the current chunk is being commanded; returns its (7,) target."""
        self.last_row = row
        self._commanded = (self.plan, row, self.lag)
        return self.plan.chunk[row]

    def unexecuted(self, t: float) -> np.ndarray | None:
        """(R, 7) rows of the last commanded chunk after its last commanded row, from the row for loop time ``t``
        on (the horizon does not cut them: they are the chunk's intent); None when there are none."""
        if self._commanded is None:
            return None
        plan, row, lag = self._commanded
        now = math.floor((t + plan.dt_s - plan.t0_s) / plan.dt_s + 0.5) - plan.i0 - lag
        first = max(row + 1, now)
        return np.asarray(plan.chunk[first:], dtype=np.float64) if first < len(plan.chunk) else None

    def rows_left(self, t: float) -> int | None:
        """Rows of the current chunk left after the one for ``t`` (time only); None without a usable row."""
        if self.plan is None:
            return None
        row = self.row_for(self.plan, t, self.last_row, self.lag)
        return None if row is None else self.horizon(self.plan) - row - 1
