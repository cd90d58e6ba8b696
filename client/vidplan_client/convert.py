"""numpy <-> wire messages: encode camera views and robot state into a PlanRequest, read a PlanResponse back.

Conventions (``proto/vidplan/v1/vidplan.proto``): images are RGB ``uint8`` ``(H, W, 3)``; ``joint_position``
(7,) rad; ``cartesian_position`` (6,) x, y, z m then roll, pitch, yaw rad (extrinsic XYZ);
``gripper_position`` in [0, 1] (1 = closed). A chunk is ``(S, 7)``: 6 absolute TCP pose targets + gripper,
one row per control step; row ``k`` is the target for robot time ``t0_s + (i0 + k) * dt_s``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from vidplan_client.contract import CAMERA_NAMES
from vidplan_client.wire import vidplan_pb2 as pb

ENCODINGS = {"jpeg": pb.IMAGE_ENCODING_JPEG, "png": pb.IMAGE_ENCODING_PNG, "raw": pb.IMAGE_ENCODING_RAW_RGB}
ACTION_SPACES = {
    "cartesian_position": pb.ACTION_SPACE_CARTESIAN_POSITION,
    "joint_velocity": pb.ACTION_SPACE_JOINT_VELOCITY,
}
_ROW_WIDTH = {"cartesian_position": 7, "joint_velocity": 8}
#: PlanOptions.mode: a VidPlan plan, or the bundle's policy alone (the baseline; GetInfo ``modes`` says if offered).
MODES = {"plan": pb.PLAN_MODE_PLAN, "policy": pb.PLAN_MODE_POLICY}
#: PlanOptions.uq_method: the uncertainty that weights the selection (GetInfo ``uq_methods`` says which are offered).
UQ_METHODS = {
    "bins": pb.UQ_METHOD_BINS,
    "c3-fsc": pb.UQ_METHOD_C3_FSC,
    "c3-cs": pb.UQ_METHOD_C3_CS,
    "squbed": pb.UQ_METHOD_SQUBED,
}
#: The server stores session ids, so it bounds them (GetInfo ``request_limits.max_session_id_chars``).
MAX_SESSION_ID_CHARS = 128


class WireError(ValueError):
    """An array or message that does not fit the wire contract; the message names the field."""


class PlanFailed(RuntimeError):
    """The server answered a StreamPlan request with an error instead of a chunk."""

    def __init__(self, code: str, message: str, violations: Sequence[str] = ()) -> None:
        super().__init__(f"{code}: {message}" + (f" ({'; '.join(violations)})" if violations else ""))
        self.code = code
        self.violations = list(violations)


# ----------------------------------------------------------------------------------------------------------------------
# images


def encode_image(rgb: np.ndarray, camera: str, encoding: str = "jpeg", jpeg_quality: int = 90) -> pb.CameraFrame:
    """One RGB ``uint8`` ``(H, W, 3)`` view -> CameraFrame (JPEG, PNG or raw bytes)."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise WireError(f"image {camera!r} must be uint8 (H, W, 3) RGB, got {rgb.dtype} {rgb.shape}")
    if encoding not in ENCODINGS:
        raise WireError(f"encoding must be one of {sorted(ENCODINGS)}, got {encoding!r}")
    height, width = rgb.shape[:2]
    if encoding == "raw":
        data = np.ascontiguousarray(rgb).tobytes()
    else:
        bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
        params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if encoding == "jpeg" else []
        ok, buf = cv2.imencode(".jpg" if encoding == "jpeg" else ".png", bgr, params)
        if not ok:
            raise WireError(f"opencv could not encode image {camera!r} as {encoding}")
        data = buf.tobytes()
    return pb.CameraFrame(camera=camera, encoding=ENCODINGS[encoding], width=width, height=height, data=data)


def decode_image(frame: pb.CameraFrame) -> np.ndarray:
    """CameraFrame -> RGB ``uint8`` ``(height, width, 3)``; checks the declared size."""
    shape = (frame.height, frame.width, 3)
    if frame.encoding == pb.IMAGE_ENCODING_RAW_RGB:
        if len(frame.data) != frame.height * frame.width * 3:
            raise WireError(f"raw image {frame.camera!r}: {len(frame.data)} bytes for {shape}")
        return np.frombuffer(frame.data, np.uint8).reshape(shape).copy()
    if frame.encoding not in (pb.IMAGE_ENCODING_JPEG, pb.IMAGE_ENCODING_PNG):
        raise WireError(f"image {frame.camera!r} has no valid encoding ({frame.encoding})")
    bgr = cv2.imdecode(np.frombuffer(frame.data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise WireError(f"image {frame.camera!r} does not decode")
    if bgr.shape != shape:
        raise WireError(f"image {frame.camera!r} decodes to {bgr.shape}, declared {shape}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# ----------------------------------------------------------------------------------------------------------------------
# requests


def _vector(name: str, values, size: int) -> list[float]:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.shape != (size,) or not np.all(np.isfinite(arr)):
        raise WireError(f"{name} must be {size} finite numbers, got {np.asarray(values).shape}")
    return arr.tolist()


def make_state(joint_position, cartesian_position, gripper_position: float) -> pb.RobotState:
    """Robot state from arrays: joints (7,) rad, TCP pose (6,) m / rad, gripper in [0, 1]."""
    gripper = float(np.asarray(gripper_position, dtype=np.float64).reshape(-1)[0])
    if not np.isfinite(gripper):
        raise WireError("gripper_position must be finite")
    return pb.RobotState(
        joint_position=_vector("joint_position", joint_position, 7),
        cartesian_position=_vector("cartesian_position", cartesian_position, 6),
        gripper_position=gripper,
    )


def make_observation(
    images: Mapping[str, np.ndarray],
    state: pb.RobotState,
    timestamp_s: float,
    encoding: str = "jpeg",
    jpeg_quality: int = 90,
    cameras: Sequence[str] = CAMERA_NAMES,
) -> pb.Observation:
    """Observation from one RGB view per camera (``images[name]`` uint8 ``(H, W, 3)``) and a state."""
    missing = [c for c in cameras if c not in images]
    if missing:
        raise WireError(f"missing camera view(s) {missing}; got {sorted(images)}")
    frames = [encode_image(images[c], c, encoding, jpeg_quality) for c in cameras]
    return pb.Observation(timestamp_s=float(timestamp_s), frames=frames, state=state)


def plan_options(
    num_proposals: int | None = None,
    refine_iters: int | None = None,
    flow_steps: int | None = None,
    deadline_ms: int | None = None,
    seed: int = 0,
    return_heatmaps: bool = False,
    nominal_perturbations: int | None = None,
    policy_samples: int | None = None,
    policy_perturbations: int | None = None,
    mode: str = "plan",
    uq_method: str | None = None,
) -> pb.PlanOptions:
    """PlanOptions; ``None`` leaves a field unset, which means the server's default.

    ``policy_samples`` / ``policy_perturbations``: the proposals sampled from the server bundle's policy and their
    perturbed copies (when no nominal chunk is sent). ``mode``: "plan" (VidPlan), or "policy": the bundle's policy
    alone, the baseline to compare against (one safety-checked chunk, no world model; per-frame fields empty,
    confidence 0), only on a server whose GetInfo ``modes`` lists PLAN_MODE_POLICY. ``uq_method``: the uncertainty
    that weights the selection score and the reported uncertainty (one of :data:`UQ_METHODS`; None = the server's
    default), only one the server's GetInfo ``uq_methods`` lists.
    """
    given = {
        "num_proposals": num_proposals,
        "refine_iters": refine_iters,
        "flow_steps": flow_steps,
        "deadline_ms": deadline_ms,
        "nominal_perturbations": nominal_perturbations,
        "policy_samples": policy_samples,
        "policy_perturbations": policy_perturbations,
    }
    for name, value in given.items():
        if value is not None and value < 0:
            raise WireError(f"{name} must be >= 0, got {value}")
    if mode not in MODES:
        raise WireError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    if uq_method is not None and uq_method not in UQ_METHODS:
        raise WireError(f"uq_method must be one of {', '.join(UQ_METHODS)}, got {uq_method!r}")
    return pb.PlanOptions(
        seed=seed,
        return_heatmaps=return_heatmaps,
        mode=MODES[mode],
        uq_method=UQ_METHODS[uq_method] if uq_method is not None else pb.UQ_METHOD_UNSPECIFIED,
        **{k: int(v) for k, v in given.items() if v is not None},
    )


def make_request(
    session_id: str,
    sequence: int,
    instruction: str,
    observation: pb.Observation,
    history: Sequence[pb.Observation] = (),
    nominal: np.ndarray | None = None,
    nominal_space: str = "cartesian_position",
    options: pb.PlanOptions | None = None,
    reference: np.ndarray | None = None,
) -> pb.PlanRequest:
    """PlanRequest. ``history``: earlier observations, oldest first, without ``observation``.

    ``nominal``: optional ``(S, 7)`` cartesian_position + gripper or ``(S, 8)`` joint_velocity + gripper chunk.
    ``reference``: optional ``(R, 7)`` cartesian_position + gripper, the rows of the chunk the robot is executing
    that it has not executed yet (the server's policy samples continue it).
    """
    if not instruction.strip():
        raise WireError("instruction must not be empty")
    if len(session_id) > MAX_SESSION_ID_CHARS or not all(" " <= c <= "~" for c in session_id):
        raise WireError(
            f"session_id must be at most {MAX_SESSION_ID_CHARS} printable ASCII characters, got "
            f"{session_id[:40]!r}{'...' if len(session_id) > 40 else ''} ({len(session_id)} characters)"
        )
    request = pb.PlanRequest(
        session_id=session_id,
        sequence=int(sequence),
        instruction=instruction,
        observation=observation,
        history=list(history),
        options=options,
    )
    if nominal is not None:
        if nominal_space not in ACTION_SPACES:
            raise WireError(f"nominal_space must be one of {sorted(ACTION_SPACES)}, got {nominal_space!r}")
        rows = np.asarray(nominal, dtype=np.float64)
        width = _ROW_WIDTH[nominal_space]
        if rows.ndim != 2 or rows.shape[1] != width or len(rows) == 0 or not np.all(np.isfinite(rows)):
            raise WireError(f"nominal {nominal_space} chunk must be finite (S, {width}), got {rows.shape}")
        request.nominal.space = ACTION_SPACES[nominal_space]
        request.nominal.rows.extend(pb.ActionRow(values=r.tolist()) for r in rows)
    if reference is not None and len(reference):
        rows = np.asarray(reference, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != 7 or not np.all(np.isfinite(rows)):
            raise WireError(f"reference must be finite (R, 7) cartesian_position + gripper rows, got {rows.shape}")
        request.reference.extend(pb.ActionRow(values=r.tolist()) for r in rows)
    return request


def request_arrays(request: pb.PlanRequest) -> dict:
    """Decode a request back to numpy (tests, logging): images per camera, state, nominal, reference."""
    obs = request.observation
    out = {
        "images": {f.camera: decode_image(f) for f in obs.frames},
        "joint_position": np.array(obs.state.joint_position),
        "cartesian_position": np.array(obs.state.cartesian_position),
        "gripper_position": obs.state.gripper_position,
        "timestamp_s": obs.timestamp_s,
        "history_timestamps_s": [h.timestamp_s for h in request.history],
        "nominal": None,
        "reference": rows_to_array(request.reference, 7, "reference") if request.reference else None,
    }
    if request.HasField("nominal"):
        out["nominal"] = rows_to_array(request.nominal.rows)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# responses


def rows_to_array(rows: Sequence[pb.ActionRow], width: int | None = None, name: str = "rows") -> np.ndarray:
    """Repeated ActionRow -> ``(S, width)`` float64 (``(0, width)`` when empty)."""
    arr = [list(r.values) for r in rows]
    widths = {len(r) for r in arr}
    if len(widths) > 1 or (width is not None and widths and widths != {width}):
        raise WireError(f"{name}: rows must all have {width or 'the same number of'} values, got widths {widths}")
    if not arr:
        return np.zeros((0, width or 0))
    return np.asarray(arr, dtype=np.float64)


@dataclass
class Plan:
    """A PlanResponse as numpy. ``chunk`` (S, 7); per-frame arrays (H,)."""

    session_id: str
    sequence: int
    chunk: np.ndarray  # (S, 7) absolute TCP pose (m, rad) + gripper per control step
    t0_s: float  # timestamp of the observation the plan answers
    i0: int  # control-step offset of row 0 from t0_s
    dt_s: float  # control period of the rows, s
    joint_positions: np.ndarray  # (S, 7) rad, or (0, 7) when the server sent none
    frame_stride: int = 0
    confidence: float = 0.0
    uncertainty: np.ndarray = field(default_factory=lambda: np.zeros(0))
    expected_error: np.ndarray = field(default_factory=lambda: np.zeros(0))
    semantic_reward: np.ndarray = field(default_factory=lambda: np.zeros(0))
    value: np.ndarray = field(default_factory=lambda: np.zeros(0))
    refined: bool = False
    deadline_hit: bool = False
    notes: list[str] = field(default_factory=list)
    model_version: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)

    def step_times_s(self) -> np.ndarray:
        """(S,) robot time each row is the target for: ``t0_s + (i0 + k) * dt_s``."""
        return self.t0_s + (self.i0 + np.arange(len(self.chunk))) * self.dt_s


def response_to_plan(response: pb.PlanResponse) -> Plan:
    """PlanResponse -> :class:`Plan`; raises :class:`PlanFailed` when the response carries an error."""
    if response.HasField("error"):
        e = response.error
        raise PlanFailed(e.code or "UNKNOWN", e.message, e.violations)
    chunk = rows_to_array(response.chunk, 7, "chunk")
    if len(chunk) == 0:
        raise WireError("response carries no chunk rows")
    if not np.all(np.isfinite(chunk)):
        raise WireError("chunk holds non-finite values")
    if response.stamp.dt_s <= 0:
        raise WireError(f"stamp.dt_s must be > 0, got {response.stamp.dt_s}")
    return Plan(
        session_id=response.session_id,
        sequence=response.sequence,
        chunk=chunk,
        t0_s=response.stamp.t0_s,
        i0=response.stamp.i0,
        dt_s=response.stamp.dt_s,
        joint_positions=rows_to_array(response.joint_positions, 7, "joint_positions"),
        frame_stride=response.frame_stride,
        confidence=response.confidence,
        uncertainty=np.array(response.uncertainty),
        expected_error=np.array(response.expected_error),
        semantic_reward=np.array(response.semantic_reward),
        value=np.array(response.value),
        refined=response.refined,
        deadline_hit=response.deadline_hit,
        notes=list(response.notes),
        model_version=response.model_version,
        timings_ms=dict(response.timings_ms),
    )
