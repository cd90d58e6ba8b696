"""Checks of every field of a :class:`PlanCall` before anything is stored, each failure naming its field.

:func:`field_ranges` is the one table of valid ranges of the request's numbers, keyed by wire path; the
planner's own ranges (robot state, nominal rows) come from :mod:`vidplan_server.planning.types`, where they
are defined once, and ``proto/vidplan/v1/vidplan.proto`` states every range in its comments (a test compares
them). Limits on sizes (session id, instruction, history, nominal rows, images) are :class:`Limits`, built once
per service from its config and the planner's info, and reported by GetInfo / ``GET /v1/info``.

Image headers and pixels are checked where they are decoded (:mod:`.images`); sequence order where
sessions live (:mod:`.sessions`). What passes here is converted to the planner's types.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from vidplan_server.planning.types import (
    MODES,
    NOMINAL_RANGES,
    NOMINAL_SPACES,
    STATE_RANGES,
    PlanOptions,
    Range,
    RobotState,
)
from vidplan_server.serving.config import ServiceConfig
from vidplan_server.serving.errors import InvalidArgument, show
from vidplan_server.serving.messages import Image, PlanCall

#: Columns of a nominal chunk per action space: 6 pose + gripper, or 7 joint velocities + gripper.
NOMINAL_WIDTH = {space: len(NOMINAL_RANGES[space].low) for space in NOMINAL_SPACES}

UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
#: Robot-clock timestamps (s): non-negative, and small enough that 1 ms still resolves (1e10 s is year 2286).
TIMESTAMP_RANGE = Range(0.0, 1e10)
#: The planner's upper limits of per-request options, when it does not say its own (PlannerConfig's defaults).
DEFAULT_OPTION_MAX = {"num_proposals": 64, "refine_iters": 50, "flow_steps": 16}


@dataclass(frozen=True)
class IntRange:
    """The valid closed interval of an integer field (exact for uint64)."""

    low: int
    high: int

    def violation(self, value: int) -> str | None:
        return None if self.low <= value <= self.high else f"{value} is outside [{self.low}, {self.high}]"

    def text(self) -> str:
        return f"[{self.low}, {self.high}]"


def field_ranges(option_max: Mapping[str, int] = DEFAULT_OPTION_MAX,
                 max_image_side: int = ServiceConfig().max_image_size[1]) -> dict[str, Range | IntRange]:
    """The valid range of every number of a PlanRequest, by wire path (vectors: per element)."""
    n_max = option_max["num_proposals"]
    return {
        "sequence": IntRange(0, UINT64_MAX),
        "observation.timestamp_s": TIMESTAMP_RANGE,
        "observation.frames[].width": IntRange(0, max_image_side),
        "observation.frames[].height": IntRange(0, max_image_side),
        "observation.state.joint_position": STATE_RANGES["joint_position"],
        "observation.state.cartesian_position": STATE_RANGES["cartesian_position"],
        "observation.state.gripper_position": STATE_RANGES["gripper_position"],
        "history[].timestamp_s": TIMESTAMP_RANGE,
        "nominal.rows (cartesian_position)": NOMINAL_RANGES["cartesian_position"],
        "nominal.rows (joint_velocity)": NOMINAL_RANGES["joint_velocity"],
        "options.num_proposals": IntRange(1, n_max),
        "options.refine_iters": IntRange(0, option_max["refine_iters"]),
        "options.flow_steps": IntRange(1, option_max["flow_steps"]),
        "options.deadline_ms": IntRange(0, UINT32_MAX),
        "options.seed": IntRange(0, UINT64_MAX),
        "options.nominal_perturbations": IntRange(0, n_max - 1),
        "options.policy_samples": IntRange(0, n_max),
        "options.policy_perturbations": IntRange(0, n_max),
    }


#: The table at the default settings (what the proto's comments state).
FIELD_RANGES = field_ranges()
#: The optional counts of PlanOptions (unset = the server's default), each a row ``options.<name>`` of the table.
OPTIONAL_COUNTS = ("num_proposals", "refine_iters", "flow_steps", "nominal_perturbations", "policy_samples",
                   "policy_perturbations")


@dataclass(frozen=True)
class Limits:
    """What a request is checked against: the ranges table and the size limits of one service."""

    cameras: tuple[str, ...]
    ranges: Mapping[str, Range | IntRange]
    max_history: int  # observations in ``history``
    max_image_size: tuple[int, int]  # (shorter side, longer side), pixels
    max_instruction_chars: int
    max_session_id_chars: int
    max_nominal_steps: int
    modes: tuple[str, ...] = ("plan",)  # what ``options.mode`` may ask for: "policy" only with a policy

    @classmethod
    def build(cls, config: ServiceConfig, info: Mapping[str, Any], option_max: Mapping[str, int]) -> Limits:
        """From the service's config and the planner's info (cameras, history length, frame stride)."""
        model_history = int(info["history"]) * int(info["frame_stride"])
        max_history = model_history if config.max_history is None else min(config.max_history, model_history)
        return cls(
            cameras=tuple(info["cameras"]),
            ranges=field_ranges(option_max, config.max_image_size[1]),
            max_history=max_history,
            max_image_size=tuple(config.max_image_size),
            max_instruction_chars=config.max_instruction_chars,
            max_session_id_chars=config.max_session_id_chars,
            max_nominal_steps=config.max_nominal_steps,
            modes=tuple(info.get("modes", ("plan",))),
        )

    def as_dict(self) -> dict[str, Any]:
        """For GetInfo / ``GET /v1/info``."""
        r = self.ranges
        return {
            "max_history": self.max_history,
            "max_image_short_side": self.max_image_size[0],
            "max_image_long_side": self.max_image_size[1],
            "max_instruction_chars": self.max_instruction_chars,
            "max_session_id_chars": self.max_session_id_chars,
            "max_nominal_steps": self.max_nominal_steps,
            "max_num_proposals": r["options.num_proposals"].high,
            "max_refine_iters": r["options.refine_iters"].high,
            "max_flow_steps": r["options.flow_steps"].high,
        }


@dataclass(frozen=True)
class CheckedCall:
    """The validated non-image parts of a call, in the planner's types."""

    instruction: str
    state: RobotState
    nominal: np.ndarray | None
    options: PlanOptions  # without deadline_s; the worker sets it when the plan starts


def check_session_id(session_id: object, limits: Limits) -> str:
    if not isinstance(session_id, str):
        raise InvalidArgument("expected a string", field="session_id")
    if len(session_id) > limits.max_session_id_chars:
        raise InvalidArgument(f"{len(session_id)} characters, at most {limits.max_session_id_chars}",
                              field="session_id")
    if not all(" " <= ch <= "~" for ch in session_id):
        raise InvalidArgument(f"{show(session_id)} has characters other than printable ASCII", field="session_id")
    return session_id


def check_call(call: PlanCall, limits: Limits) -> CheckedCall:
    """Validate everything but pixel data; raises :class:`InvalidArgument` naming the first bad field."""
    ranges = limits.ranges
    check_session_id(call.session_id, limits)
    check_range(call.sequence, ranges["sequence"], "sequence")
    if not isinstance(call.instruction, str) or len(call.instruction) > limits.max_instruction_chars:
        size = len(call.instruction) if isinstance(call.instruction, str) else "not a string"
        raise InvalidArgument(f"{size} characters, at most {limits.max_instruction_chars}", field="instruction")
    instruction = call.instruction.strip()
    if not instruction:
        raise InvalidArgument("must not be empty", field="instruction")
    if call.deadline_s is not None and not (math.isfinite(call.deadline_s) and call.deadline_s >= 0):
        raise InvalidArgument(f"{call.deadline_s} s is not a finite budget >= 0", field="options.deadline_ms")
    obs = call.observation
    check_frames(obs.frames, limits, "observation.frames")
    check_range(obs.timestamp_s, ranges["observation.timestamp_s"], "observation.timestamp_s")
    if obs.state is None:
        raise InvalidArgument("missing", field="observation.state")
    state = RobotState(
        joint_position=_vector(obs.state.joint_position, ranges["observation.state.joint_position"], 7,
                               "observation.state.joint_position"),
        cartesian_position=_vector(obs.state.cartesian_position, ranges["observation.state.cartesian_position"], 6,
                                   "observation.state.cartesian_position"),
        gripper_position=check_range(obs.state.gripper_position, ranges["observation.state.gripper_position"],
                                   "observation.state.gripper_position"),
    )
    if len(call.history) > limits.max_history:
        raise InvalidArgument(
            f"{len(call.history)} observations, at most {limits.max_history} (the span the model's history "
            "covers at the control rate; older ones could not be used)",
            field="history",
        )
    previous = -math.inf
    for i, past in enumerate(call.history):
        check_frames(past.frames, limits, f"history[{i}].frames")
        ts = check_range(past.timestamp_s, ranges["history[].timestamp_s"], f"history[{i}].timestamp_s")
        if not previous < ts < obs.timestamp_s:
            raise InvalidArgument(
                f"{ts} is not after the previous history entry ({previous}) and before the "
                f"observation ({obs.timestamp_s}); history is oldest first",
                field=f"history[{i}].timestamp_s",
            )
        previous = ts
    return CheckedCall(instruction=instruction, state=state, nominal=_nominal(call, limits),
                       options=_options(call, limits))


def check_frames(frames: Mapping[str, Image], limits: Limits, field: str) -> None:
    """Exactly the model's cameras, no more, no fewer; declared image sizes within the limits."""
    cameras = limits.cameras
    unknown = [name for name in frames if name not in cameras]
    if unknown:
        raise InvalidArgument(f"unknown camera {show(unknown[0])} (expected {', '.join(cameras)})", field=field)
    missing = [name for name in cameras if name not in frames]
    if missing:
        raise InvalidArgument(f"missing camera {missing[0]!r}", field=field)
    for name in cameras:
        image = frames[name]
        for side in ("width", "height"):
            check_range(getattr(image, side), limits.ranges[f"observation.frames[].{side}"], f"{field}[{name}].{side}")


def check_range(value: object, bounds: Range | IntRange, field: str) -> Any:
    """``value`` as a number of the range's kind, or :class:`InvalidArgument` naming ``field``."""
    if isinstance(bounds, IntRange):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise InvalidArgument(f"expected an integer, got {show(value)}", field=field)
        value = int(value)
    else:
        try:
            value = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise InvalidArgument(f"expected a number, got {show(value)}", field=field) from None
        if not math.isfinite(value):
            raise InvalidArgument(f"must be finite, got {value}", field=field)
    problem = bounds.violation(value)
    if problem is not None:
        raise InvalidArgument(problem, field=field)
    return value


def _vector(values: object, bounds: Range, length: int, field: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidArgument(f"expected {length} numbers", field=field) from None
    if arr.shape != (length,):
        raise InvalidArgument(f"{arr.size} values, expected {length}", field=field)
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise InvalidArgument(f"element {bad[0]} is {arr[bad[0]]}, must be finite", field=field)
    problem = bounds.violation(arr)
    if problem is not None:
        raise InvalidArgument(problem, field=field)
    return arr


def _nominal(call: PlanCall, limits: Limits) -> np.ndarray | None:
    if call.nominal_space not in NOMINAL_WIDTH:
        raise InvalidArgument(f"{show(call.nominal_space)} is not one of {', '.join(NOMINAL_WIDTH)}",
                              field="nominal.space")
    if call.nominal is None or len(call.nominal) == 0:
        return None
    width = NOMINAL_WIDTH[call.nominal_space]
    if len(call.nominal) > limits.max_nominal_steps:
        raise InvalidArgument(f"{len(call.nominal)} steps, at most {limits.max_nominal_steps}", field="nominal")
    try:
        arr = np.asarray(call.nominal, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidArgument(f"expected rows of {width} numbers (ragged?)", field="nominal") from None
    if arr.ndim != 2 or arr.shape[1] != width:
        raise InvalidArgument(f"shape {arr.shape}, expected (steps, {width}) for {call.nominal_space}", field="nominal")
    if not np.isfinite(arr).all():
        row, col = np.argwhere(~np.isfinite(arr))[0]
        raise InvalidArgument(f"element [{row}, {col}] is {arr[row, col]}, must be finite", field="nominal")
    problem = limits.ranges[f"nominal.rows ({call.nominal_space})"].violation(arr)
    if problem is not None:
        raise InvalidArgument(f"{problem} ({call.nominal_space})", field="nominal")
    return arr


def _options(call: PlanCall, limits: Limits) -> PlanOptions:
    o, ranges = call.options, limits.ranges
    for name in OPTIONAL_COUNTS:
        value = getattr(o, name)
        if value is not None:
            check_range(value, ranges[f"options.{name}"], f"options.{name}")
    check_range(o.seed, ranges["options.seed"], "options.seed")
    if o.mode not in MODES:
        raise InvalidArgument(f"{show(o.mode)} is not one of {', '.join(MODES)}", field="options.mode")
    if o.mode not in limits.modes:
        raise InvalidArgument(f"{o.mode!r} is not offered by this server (its model bundle has no policy; "
                              f"GetInfo modes: {', '.join(limits.modes)})", field="options.mode")
    return PlanOptions(
        num_proposals=o.num_proposals,
        refine_iters=o.refine_iters,
        flow_steps=o.flow_steps,
        nominal_perturbations=o.nominal_perturbations,
        seed=int(o.seed),
        return_heatmaps=bool(o.return_heatmaps),
        policy_samples=o.policy_samples,
        policy_perturbations=o.policy_perturbations,
        mode=o.mode,
    )
