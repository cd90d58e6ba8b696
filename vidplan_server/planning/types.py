"""What goes into the planner and what comes out: plain numpy, no torch, no transport.

These are the planner's public contract; the serving layer maps its wire messages onto them.

Units and conventions (``../shared/DESIGN.md``):

- frames are RGB ``uint8`` ``(T, V, H, W, 3)``, views in :data:`~vidplan_server.data.schema.CAMERA_NAMES`
  order, history oldest first, the current frame last; history frames are ``frame_stride`` control steps
  apart (the world model's spacing, 0.2 s by default); any ``H x W`` (resized to the model's view size);
- robot state: ``joint_position`` (7,) rad, ``cartesian_position`` (6,) m / rad (x, y, z, roll, pitch,
  yaw, extrinsic XYZ), ``gripper_position`` in [0, 1] (1 = closed);
- an action chunk is ``(steps, 7)`` at the control rate (15 Hz, ``dt_s`` = 1/15 s): absolute TCP pose
  targets (6) + gripper (1). Step 0 is the first target to command after the current observation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from vidplan_server.robot.panda import JOINT_LOWER, JOINT_UPPER

#: What a request asks for: a VidPlan plan, or the bundle's policy alone (the baseline).
MODES = ("plan", "policy")

#: Action spaces a nominal chunk may come in.
NOMINAL_SPACES = ("cartesian_position", "joint_velocity")


@dataclass(frozen=True)
class Range:
    """The valid closed interval of a numeric field, per element when ``low`` / ``high`` are tuples."""

    low: float | tuple[float, ...]
    high: float | tuple[float, ...]

    def violation(self, values) -> str | None:
        """Why ``values`` (a number or a vector) is out of range, naming the first bad element; None if fine."""
        arr = np.asarray(values, dtype=np.float64)
        width = arr.shape[-1:] if arr.ndim else ()
        lo, hi = np.broadcast_to(self.low, width), np.broadcast_to(self.high, width)
        bad = ~((arr >= lo) & (arr <= hi))  # NaN is bad too
        if not bad.any():
            return None
        if not arr.ndim:
            return f"{float(arr)!r} is outside [{_num(self.low)}, {_num(self.high)}]"
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        col = idx[-1]
        where = f"element {idx[0]}" if len(idx) == 1 else f"element [{idx[0]}, {col}]"
        return f"{where} is {float(arr[idx])!r}, outside [{_num(lo[col])}, {_num(hi[col])}]"

    def text(self) -> str:
        """The range as the proto's comments write it: ``[0, 1]``, or one interval per element of a vector."""
        if not isinstance(self.low, tuple) and not isinstance(self.high, tuple):
            return f"[{_num(self.low)}, {_num(self.high)}]"
        n = max(len(b) for b in (self.low, self.high) if isinstance(b, tuple))
        lo, hi = np.broadcast_to(self.low, (n,)), np.broadcast_to(self.high, (n,))
        return ", ".join(f"[{_num(a)}, {_num(b)}]" for a, b in zip(lo, hi, strict=True))


def _num(x) -> str:
    return f"{float(x):g}"


_TWO_PI = round(2 * math.pi, 4)
#: The valid range of every number the planner takes with a request, defined once: ``Planner._validate`` checks
#: against it, and so does the serving layer (its table in ``serving/validation.py`` maps these onto wire fields
#: before anything is stored); ``proto/vidplan/v1/vidplan.proto`` states the same numbers. Joints: the Panda's
#: limits widened by 0.1 rad (readings just past a limit are real; degrees or garbage are not); positions: 2 m
#: (the Panda reaches 0.855 m); Euler angles within one turn either way; gripper 0 (open) to 1 (closed);
#: DROID's normalised joint velocities in [-1, 1].
STATE_RANGES = {
    "joint_position": Range(tuple(round(float(x) - 0.1, 4) for x in JOINT_LOWER),
                            tuple(round(float(x) + 0.1, 4) for x in JOINT_UPPER)),
    "cartesian_position": Range((-2.0,) * 3 + (-_TWO_PI,) * 3, (2.0,) * 3 + (_TWO_PI,) * 3),
    "gripper_position": Range(0.0, 1.0),
}
NOMINAL_RANGES = {  # per column of a nominal chunk's rows
    "cartesian_position": Range((-2.0,) * 3 + (-_TWO_PI,) * 3 + (0.0,), (2.0,) * 3 + (_TWO_PI,) * 3 + (1.0,)),
    "joint_velocity": Range((-1.0,) * 7 + (0.0,), (1.0,) * 8),
}


class PlanningError(ValueError):
    """A request the planner cannot serve; the message names the offending field."""


class UnsafePlanError(RuntimeError):
    """No candidate chunk satisfies the safety limits; ``violations`` lists what failed."""

    def __init__(self, violations: list[str]) -> None:
        super().__init__("no plan within the safety limits: " + "; ".join(violations))
        self.violations = violations


@dataclass(frozen=True)
class PlanOptions:
    """Per-request knobs. ``None`` means the planner's configured default."""

    num_proposals: int | None = None  # N candidate chunks rolled out in one batch
    refine_iters: int | None = None  # gradient steps on the winner (0 = selection only)
    flow_steps: int | None = None  # k network evaluations per rollout
    deadline_s: float | None = None  # wall-clock budget from the call; anytime result when it runs out
    seed: int = 0  # proposal noise and rollout noise; same request + same seed -> same plan
    return_heatmaps: bool = False  # decode the winner's predicted frames and uncertainty heatmaps
    nominal_perturbations: int | None = None  # K perturbations of a nominal chunk
    policy_samples: int | None = None  # chunks sampled from the bundle's policy (used when no nominal is sent)
    policy_perturbations: int | None = None  # ramp perturbations of those samples
    mode: str = "plan"  # "plan" (VidPlan) or "policy" (the bundle's policy alone: the baseline, no world model)


@dataclass(frozen=True)
class RobotState:
    joint_position: np.ndarray  # (7,) rad
    cartesian_position: np.ndarray  # (6,) m, rad
    gripper_position: float  # [0, 1], 1 = closed


@dataclass(frozen=True)
class PlanRequest:
    instruction: str
    history: np.ndarray  # (T, V, H, W, 3) uint8, oldest first; T = the model's history length
    state: RobotState
    nominal: np.ndarray | None = None  # (S, 7) cartesian_position + gripper, or (S, 8) joint_velocity + gripper
    nominal_space: str = "cartesian_position"
    options: PlanOptions = field(default_factory=PlanOptions)


@dataclass(frozen=True)
class RefineStep:
    iteration: int  # 0 = the selected proposal before any gradient step
    objective: float  # uncertainty-weighted expected value (what refinement maximises)
    value: float  # mean expected value over predicted frames, unweighted
    uncertainty: float  # mean normalised entropy over the frames, weighted by the value head's attention


@dataclass
class PlanResult:
    """The planner's answer. Per-frame arrays have one entry per predicted model frame (H)."""

    actions: np.ndarray  # (S, 7) control-rate chunk, S = H * frame_stride
    joint_positions: np.ndarray  # (S, 7) rad, IK of ``actions`` from the current configuration
    dt_s: float  # control period of ``actions``
    frame_stride: int  # control steps per predicted frame
    uncertainty: np.ndarray  # (H,) mean normalised entropy of the winner's rollout, in [0, 1]
    expected_error: np.ndarray  # (H,) mean expected absolute latent error
    semantic_reward: np.ndarray  # (H,) frame score of the instruction, in [-1, 1]
    value: np.ndarray  # (H,) expected discounted return from the value head, in [0, 1]
    confidence: float  # [0, 1]: mean P(latent error <= confidence_eps) over the winner's rollout
    proposal_scores: np.ndarray  # (N,) uncertainty-weighted semantic score of every proposal
    proposal_kinds: list[str]  # (N,) e.g. "basis:+x", "basis:-z/close", "nominal", "nominal~3"
    winner: int  # index of the selected proposal
    refinement: list[RefineStep]  # trace, iteration 0 first
    refined: bool  # True when the returned chunk is a refined iterate (not the raw proposal)
    timings_ms: dict[str, float]  # encode, propose, rollout, score, refine, decode, total
    deadline_hit: bool = False  # True when the deadline cut refinement or heatmaps short
    notes: list[str] = field(default_factory=list)  # why a fallback happened, in words
    predicted_frames: np.ndarray | None = None  # (H, V, h, w, 3) uint8 decoded winner rollout
    heatmaps: np.ndarray | None = None  # (H, V, h, w, 3) uint8 latent colour map overlay
