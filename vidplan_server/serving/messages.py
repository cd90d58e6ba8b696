"""Transport-free request and reply of the plan service.

The gRPC servicer and the HTTP app convert their wire messages into these dataclasses and back; they
never build planner inputs themselves. Field paths in error messages (``observation.frames[wrist_image_left].data``,
``history[2].timestamp_s``, ``observation.state.joint_position`` ...) follow the wire message
(``proto/vidplan/v1/vidplan.proto``), whose structure these dataclasses mirror.

Times: ``timestamp_s`` is the robot's clock (seconds, any epoch, one clock per session);
``deadline_s`` is a budget in seconds counted from when the server received the request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from vidplan_server.planning.types import PlanResult
from vidplan_server.planning.validation import show
from vidplan_server.serving.errors import InvalidArgument

#: Encodings an image may arrive in. ``raw`` is packed RGB ``uint8`` rows (height * width * 3 bytes).
ENCODINGS = ("jpeg", "png", "raw")


@dataclass(frozen=True)
class Image:
    """One camera frame as it came over the wire (not decoded yet)."""

    data: bytes
    encoding: str = "jpeg"  # one of ENCODINGS
    height: int = 0  # pixels; required for raw, checked against the decoded size when given
    width: int = 0  # pixels; as height
    channels: int = 3  # raw only: bytes per pixel; only 3 (RGB) is accepted


@dataclass(frozen=True)
class State:
    """Proprioception at the observation's timestamp."""

    joint_position: Sequence[float]  # (7,) rad
    cartesian_position: Sequence[float]  # (6,) m, rad (x, y, z, roll, pitch, yaw; extrinsic XYZ)
    gripper_position: float  # [0, 1], 1 = closed


@dataclass(frozen=True)
class Observation:
    """All camera views of one instant, the robot-clock time they were taken and the robot state.

    Observations carried in ``PlanCall.history`` need no ``state`` (the model only sees their frames).
    """

    frames: Mapping[str, Image]  # camera name -> image
    timestamp_s: float  # robot clock (s); for the current observation, t0 of the returned chunk
    state: State | None = None


def camera_key(camera: str) -> str:
    """A camera name as it appears in a field path: itself when short and printable, else bounded and escaped."""
    return camera if len(camera) <= 64 and camera.isprintable() and "]" not in camera else show(camera)


def frames_by_camera(pairs: Iterable[tuple[str, Image]], field: str) -> dict[str, Image]:
    """Map camera name -> image from a wire list, refusing a camera that appears twice."""
    out: dict[str, Image] = {}
    for camera, image in pairs:
        if camera in out:
            raise InvalidArgument(f"camera {show(camera)} appears more than once", field=field)
        out[camera] = image
    return out


def earliest_deadline(*budgets_s: float | None) -> float | None:
    """The tightest of several remaining budgets (s), e.g. the transport's deadline and ``options.deadline_ms``."""
    given = [b for b in budgets_s if b is not None]
    return min(given) if given else None


@dataclass(frozen=True)
class Options:
    """Per-request planner knobs; ``None`` = the planner's default (see ``PlanOptions``)."""

    num_proposals: int | None = None
    refine_iters: int | None = None
    flow_steps: int | None = None
    nominal_perturbations: int | None = None
    seed: int = 0
    return_heatmaps: bool = False
    policy_samples: int | None = None  # proposals sampled from the bundle's policy (when no nominal is sent)
    policy_perturbations: int | None = None  # perturbed copies of those samples
    mode: str = "plan"  # one of planning.types.MODES: "plan", or "policy" (the bundle's policy alone, the baseline)
    uq_method: str | None = None  # one of planning.types.UQ_METHODS weighting the selection; None = the server's


@dataclass(frozen=True)
class PlanCall:
    """One plan request.

    ``session_id`` (optional) names the robot's session: the server keeps its recent observations and
    builds the model's history from them. ``history`` carries older observations in the request itself
    so that any replica can answer; when present it is used instead of the session's frames.
    ``sequence`` must rise strictly within a session; it is echoed in the reply.
    """

    instruction: str
    observation: Observation
    session_id: str = ""
    sequence: int = 0
    history: Sequence[Observation] = ()  # older observations, oldest first, not including ``observation``
    nominal: Sequence[Sequence[float]] | np.ndarray | None = None  # (S, 7) or (S, 8), see nominal_space
    nominal_space: str = "cartesian_position"
    options: Options = field(default_factory=Options)
    # (R, 7) cartesian_position + gripper: the unexecuted rest of the chunk the robot is running (planning's
    # PlanRequest.reference); None or no rows = none
    reference: Sequence[Sequence[float]] | np.ndarray | None = None
    deadline_s: float | None = None  # remaining budget when the request arrived; None = no deadline


@dataclass
class PlanReply:
    """The planner's result stamped with where it belongs in time.

    ``t0_s`` is the observation timestamp the chunk answers; row ``k`` of ``result.actions`` is the target
    for robot time ``t0_s + (i0 + k) * dt_s``; ``i0`` = 1 (step 0 is the first target after the
    observation), so a client can skip the rows whose time has already passed.
    """

    result: PlanResult
    sequence: int
    session_id: str
    t0_s: float
    i0: int
    dt_s: float
    model_version: str
    history_timestamps_s: list[float]  # the frames the model saw, oldest first (the last is t0_s)
    timings_ms: dict[str, float]  # server-side: decode, queue, plan, total (plus the planner's own)
    dropped_sequences: list[int] = field(default_factory=list)  # stream only: stale observations skipped

    def plain_fields(self) -> dict:
        """The reply's fields that both wire formats carry as plain numbers, strings and lists, under the
        wire's names (the transports add the chunk, scores, refinement trace and images in their own types)."""
        r = self.result
        return dict(
            session_id=self.session_id,
            sequence=self.sequence,
            chunk=np.asarray(r.actions, dtype=np.float64).tolist(),
            joint_positions=np.asarray(r.joint_positions, dtype=np.float64).tolist(),
            frame_stride=r.frame_stride,
            uncertainty=r.uncertainty.tolist(),
            expected_error=r.expected_error.tolist(),
            semantic_reward=r.semantic_reward.tolist(),
            value=r.value.tolist(),
            confidence=r.confidence,
            proposal_kinds=list(r.proposal_kinds),
            winner=r.winner,
            refined=r.refined,
            deadline_hit=r.deadline_hit,
            notes=list(r.notes),
            model_version=self.model_version,
            timings_ms={**{f"planner_{k}": float(v) for k, v in r.timings_ms.items()}, **self.timings_ms},
        )
