"""Checks of every non-image field of a :class:`PlanCall`, each failure naming its field.

Images are checked where they are decoded (:mod:`.images`); sequence order where sessions live
(:mod:`.sessions`). What passes here is converted to the planner's types.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from vidplan_server.planning.types import NOMINAL_SPACES, PlanOptions, RobotState
from vidplan_server.serving.config import ServiceConfig
from vidplan_server.serving.errors import InvalidArgument
from vidplan_server.serving.messages import Image, PlanCall

#: Columns of a nominal chunk per action space: 6 pose + gripper, or 7 joint velocities + gripper.
NOMINAL_WIDTH = {"cartesian_position": 7, "joint_velocity": 8}
assert set(NOMINAL_WIDTH) == set(NOMINAL_SPACES)


@dataclass(frozen=True)
class CheckedCall:
    """The validated non-image parts of a call, in the planner's types."""

    instruction: str
    state: RobotState
    nominal: np.ndarray | None
    options: PlanOptions  # without deadline_s; the worker sets it when the plan starts


def check_call(call: PlanCall, cameras: Sequence[str], config: ServiceConfig) -> CheckedCall:
    """Validate everything but pixel data; raises :class:`InvalidArgument` naming the first bad field."""
    instruction = call.instruction.strip() if isinstance(call.instruction, str) else ""
    if not instruction:
        raise InvalidArgument("must not be empty", field="instruction")
    if len(instruction) > config.max_instruction_chars:
        raise InvalidArgument(
            f"{len(instruction)} characters, at most {config.max_instruction_chars}", field="instruction"
        )
    if call.sequence < 0:
        raise InvalidArgument(f"{call.sequence} is negative", field="sequence")
    if call.deadline_s is not None and not (math.isfinite(call.deadline_s) and call.deadline_s >= 0):
        raise InvalidArgument(f"{call.deadline_s} s is not a finite budget >= 0", field="options.deadline_ms")
    obs = call.observation
    check_cameras(obs.frames, cameras, "observation.frames")
    _finite_scalar(obs.timestamp_s, "observation.timestamp_s")
    if obs.state is None:
        raise InvalidArgument("missing", field="observation.state")
    state = RobotState(
        joint_position=_vector(obs.state.joint_position, 7, "observation.state.joint_position"),
        cartesian_position=_vector(obs.state.cartesian_position, 6, "observation.state.cartesian_position"),
        gripper_position=_finite_scalar(obs.state.gripper_position, "observation.state.gripper_position"),
    )
    if len(call.history) > config.max_history_frames:
        raise InvalidArgument(f"{len(call.history)} observations, at most {config.max_history_frames}", field="history")
    previous = -math.inf
    for i, past in enumerate(call.history):
        check_cameras(past.frames, cameras, f"history[{i}].frames")
        ts = _finite_scalar(past.timestamp_s, f"history[{i}].timestamp_s")
        if not previous < ts < obs.timestamp_s:
            raise InvalidArgument(
                f"{ts} is not after the previous history entry ({previous}) and before the "
                f"observation ({obs.timestamp_s}); history is oldest first",
                field=f"history[{i}].timestamp_s",
            )
        previous = ts
    return CheckedCall(instruction=instruction, state=state, nominal=_nominal(call, config), options=_options(call))


def check_cameras(frames: Mapping[str, Image], cameras: Sequence[str], field: str) -> None:
    """Exactly the model's cameras, no more, no fewer."""
    unknown = [name for name in frames if name not in cameras]
    if unknown:
        raise InvalidArgument(f"unknown camera {unknown[0]!r} (expected {', '.join(cameras)})", field=field)
    missing = [name for name in cameras if name not in frames]
    if missing:
        raise InvalidArgument(f"missing camera {missing[0]!r}", field=field)


def _finite_scalar(value: object, field: str) -> float:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidArgument(f"expected a number, got {value!r}", field=field) from None
    if not math.isfinite(x):
        raise InvalidArgument(f"must be finite, got {x}", field=field)
    return x


def _vector(values: object, length: int, field: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidArgument(f"expected {length} numbers", field=field) from None
    if arr.shape != (length,):
        raise InvalidArgument(f"{arr.size} values, expected {length}", field=field)
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise InvalidArgument(f"element {bad[0]} is {arr[bad[0]]}, must be finite", field=field)
    return arr


def _nominal(call: PlanCall, config: ServiceConfig) -> np.ndarray | None:
    if call.nominal_space not in NOMINAL_WIDTH:
        raise InvalidArgument(f"{call.nominal_space!r} is not one of {', '.join(NOMINAL_WIDTH)}", field="nominal_space")
    if call.nominal is None or len(call.nominal) == 0:
        return None
    width = NOMINAL_WIDTH[call.nominal_space]
    try:
        arr = np.asarray(call.nominal, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidArgument(f"expected rows of {width} numbers (ragged?)", field="nominal") from None
    if arr.ndim != 2 or arr.shape[1] != width:
        raise InvalidArgument(f"shape {arr.shape}, expected (steps, {width}) for {call.nominal_space}", field="nominal")
    if arr.shape[0] > config.max_nominal_steps:
        raise InvalidArgument(f"{arr.shape[0]} steps, at most {config.max_nominal_steps}", field="nominal")
    if not np.isfinite(arr).all():
        row, col = np.argwhere(~np.isfinite(arr))[0]
        raise InvalidArgument(f"element [{row}, {col}] is {arr[row, col]}, must be finite", field="nominal")
    return arr


def _options(call: PlanCall) -> PlanOptions:
    """Lower bounds only: the planner owns the upper limits and reports them as ``options.<name>``."""
    o = call.options
    for name, value, low in (
        ("num_proposals", o.num_proposals, 1),
        ("refine_iters", o.refine_iters, 0),
        ("flow_steps", o.flow_steps, 1),
        ("nominal_perturbations", o.nominal_perturbations, 0),
    ):
        if value is not None and value < low:
            raise InvalidArgument(f"{value} is below {low}", field=f"options.{name}")
    return PlanOptions(
        num_proposals=o.num_proposals,
        refine_iters=o.refine_iters,
        flow_steps=o.flow_steps,
        nominal_perturbations=o.nominal_perturbations,
        seed=int(o.seed),
        return_heatmaps=bool(o.return_heatmaps),
    )
