"""One :meth:`Planner.plan <vidplan_server.planning.planner.Planner.plan>` call in progress, and what it returns.

:class:`PlanCall` carries a call's request, counts, clock, deadline, per-stage times and notes through the planner's
named steps (and :mod:`~vidplan_server.planning.batch`'s); :class:`Chosen` is the chunk a call settles on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from vidplan_server.planning.refine import Rollout
from vidplan_server.planning.types import OptionCounts, PlanRequest, RefineStep

if TYPE_CHECKING:
    import torch

STAGES = ("encode", "propose", "rollout", "score", "refine", "decode")


@dataclass
class PlanCall:
    """One plan call in progress: the request, its counts, the clock and deadline, per-stage times and notes."""

    req: PlanRequest
    counts: OptionCounts
    clock: Callable[[], float]
    t_start: float
    deadline: float | None
    q0: np.ndarray  # (7,) current joints
    pose0: np.ndarray  # (6,) current TCP pose
    g0: float  # current gripper, clipped to [0, 1]
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    notes: list[str] = field(default_factory=list)
    deadline_hit: bool = False
    located: torch.Tensor | None = None  # (3,) m, where the bundle's locator put the instructed object (encode step)
    _mark: float = 0.0

    def start_laps(self) -> None:
        self._mark = self.clock()

    def lap(self, stage: str) -> None:
        """Record ``stage`` as the time since the previous lap (or since :meth:`start_laps`)."""
        now = self.clock()
        self.timings[stage] = (now - self._mark) * 1e3
        self._mark = now


@dataclass
class Chosen:
    """What the plan returns: the rollout, the chunk and its joints, whether it is a refined iterate."""

    rollout: Rollout
    actions: np.ndarray  # (S, 7)
    joints: np.ndarray  # (S, 7)
    refined: bool = False
    trace: list[RefineStep] = field(default_factory=list)
