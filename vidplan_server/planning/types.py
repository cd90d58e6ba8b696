"""What goes into the planner and what comes out: plain numpy, no torch, no transport.

These are the planner's public contract; the serving layer maps its wire messages onto them. What a valid
request is lives in :mod:`vidplan_server.planning.validation`; what a model offers is :class:`ModelInfo`.

Units and conventions (``../shared/DESIGN.md``):

- frames are RGB ``uint8`` ``(T, V, H, W, 3)``, views in :data:`~vidplan_client.contract.CAMERA_NAMES`
  order, history oldest first, the current frame last; history frames are ``frame_stride`` control steps
  apart (the world model's spacing, 0.2 s by default); any ``H x W`` (resized to the model's view size);
- robot state: ``joint_position`` (7,) rad, ``cartesian_position`` (6,) m / rad (x, y, z, roll, pitch,
  yaw, extrinsic XYZ), ``gripper_position`` in [0, 1] (1 = closed);
- an action chunk is ``(steps, 7)`` at the control rate (15 Hz, ``dt_s`` = 1/15 s): absolute TCP pose
  targets (6) + gripper (1). Step 0 is the first target to command after the current observation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from vidplan_client.contract import ACTION_SPACE, CAMERA_NAMES, DT_S

from vidplan_server.planning.limits import SafetyLimits

#: What a request asks for: a VidPlan plan, or the bundle's policy alone (the baseline).
MODES = ("plan", "policy")

#: Uncertainty methods the selection score can be weighted with (``planning/uq_methods.py``); "bins" is the default.
UQ_METHODS = ("bins", "c3-fsc", "c3-cs", "squbed")

#: Action spaces a nominal chunk may come in.
NOMINAL_SPACES = ("cartesian_position", "joint_velocity")


class PlanningError(ValueError):
    """A request the planner cannot serve; the message starts with the offending field.

    Raised with ``field`` (``PlanningError("is outside [0, 1]", field="state.gripper_position")``) it keeps the
    field and the problem apart (``.field``, ``.problem``), so a transport can rename the field for its wire.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.problem = message


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
    uq_method: str | None = None  # the uncertainty weighting the selection (UQ_METHODS); None = the planner's


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
    # (R, 7) cartesian_position + gripper: the rows of the chunk the robot is executing that it has not executed
    # yet; the policy's samples stay coherent with it (planning/policy_samples.py, ``coherent_index``). None: none.
    reference: np.ndarray | None = None


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


@dataclass(frozen=True)
class OptionCounts:
    """The planner's per-request counts: its defaults, or the most a request may ask for."""

    num_proposals: int
    refine_iters: int
    flow_steps: int

    def as_dict(self) -> dict[str, int]:
        return {"num_proposals": self.num_proposals, "refine_iters": self.refine_iters, "flow_steps": self.flow_steps}


@dataclass(frozen=True)
class ModelInfo:
    """What a planner and its model bundle offer: the contract GetInfo / ``GET /v1/info`` report."""

    model_version: str
    image_size: tuple[int, int]  # (height, width) of each view the model sees
    history: int  # T frames the model sees, ``frame_stride`` control steps apart
    horizon: int  # H predicted frames
    frame_stride: int  # control steps per model frame
    defaults: OptionCounts  # what an unset option means
    maxima: OptionCounts  # the most a request may ask for
    limits: SafetyLimits = field(default_factory=SafetyLimits)
    modes: tuple[str, ...] = ("plan",)  # ``options.mode`` values offered ("policy" needs a policy module)
    device: str = "cpu"
    cameras: tuple[str, ...] = CAMERA_NAMES
    dt_s: float = DT_S  # control period of a chunk's rows
    action_space: str = ACTION_SPACE
    nominal_spaces: tuple[str, ...] = NOMINAL_SPACES
    uq_methods: tuple[str, ...] = ("bins",)  # ``options.uq_method`` values offered (c3 / squbed need their modules)
    default_uq_method: str = "bins"  # what an unset ``options.uq_method`` means (the planner's config)

    @property
    def chunk_steps(self) -> int:
        """Rows of a chunk at the control rate."""
        return self.horizon * self.frame_stride

    @property
    def spacing_s(self) -> float:
        """Time between the model's history frames (s)."""
        return self.frame_stride * self.dt_s

    def as_dict(self) -> dict:
        """JSON form (``GET /v1/info``)."""
        return {
            "model_version": self.model_version,
            "cameras": list(self.cameras),
            "image_size": list(self.image_size),
            "history": self.history,
            "horizon": self.horizon,
            "frame_stride": self.frame_stride,
            "chunk_steps": self.chunk_steps,
            "dt_s": self.dt_s,
            "action_space": self.action_space,
            "nominal_spaces": list(self.nominal_spaces),
            "modes": list(self.modes),
            "uq_methods": list(self.uq_methods),
            "default_uq_method": self.default_uq_method,
            "device": self.device,
            "defaults": self.defaults.as_dict(),
            "limits": self.limits.as_dict(),
        }
