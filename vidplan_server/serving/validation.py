"""Checks of every field of a :class:`PlanCall` before anything is stored, each failure naming its wire field.

The rules themselves are the planner's (:mod:`vidplan_server.planning.validation`: the ranges of the robot state,
the nominal chunk and the options, defined once); this module applies them under the wire's field names and adds
what only the wire has: session id, sequence number, timestamps, history order and size, image sizes.
:func:`field_ranges` is the one table of valid ranges of the request's numbers, keyed by wire path, and
``proto/vidplan/v1/vidplan.proto`` states every range in its comments (a test compares them). Limits on sizes
(session id, instruction, history, nominal rows, images) are :class:`Limits`, built once per service from its
config and the planner's :class:`~vidplan_server.planning.types.ModelInfo`, and reported by GetInfo /
``GET /v1/info``.

Image headers and pixels are checked where they are decoded (:mod:`.images`); sequence order where
sessions live (:mod:`.sessions`). What passes here is converted to the planner's types.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vidplan_server.planning import validation as rules
from vidplan_server.planning.types import ModelInfo, OptionCounts, PlanningError, PlanOptions, RobotState
from vidplan_server.planning.validation import (
    NOMINAL_RANGES,
    STATE_RANGES,
    UINT64_MAX,
    IntRange,
    Range,
    option_ranges,
    show,
)
from vidplan_server.serving.config import ServiceConfig
from vidplan_server.serving.errors import InvalidArgument
from vidplan_server.serving.messages import Image, PlanCall

UINT32_MAX = 2**32 - 1
#: Robot-clock timestamps (s): non-negative, and small enough that 1 ms still resolves (1e10 s is year 2286).
TIMESTAMP_RANGE = Range(0.0, 1e10)
#: The planner's upper limits of per-request options at PlannerConfig's defaults (the table the proto states).
DEFAULT_MAXIMA = OptionCounts(num_proposals=64, refine_iters=50, flow_steps=16)


def field_ranges(
    maxima: OptionCounts = DEFAULT_MAXIMA, max_image_side: int = ServiceConfig().max_image_size[1]
) -> dict[str, Range | IntRange]:
    """The valid range of every number of a PlanRequest, by wire path (vectors: per element)."""
    options = option_ranges(maxima)
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
        "options.num_proposals": options["num_proposals"],
        "options.refine_iters": options["refine_iters"],
        "options.flow_steps": options["flow_steps"],
        "options.deadline_ms": IntRange(0, UINT32_MAX),
        "options.seed": options["seed"],
        "options.nominal_perturbations": options["nominal_perturbations"],
        "options.policy_samples": options["policy_samples"],
        "options.policy_perturbations": options["policy_perturbations"],
    }


#: The table at the default settings (what the proto's comments state).
FIELD_RANGES = field_ranges()


@contextmanager
def _wire_fields() -> Iterator[None]:
    """The planner's rules, applied under wire field names, report :class:`InvalidArgument`."""
    try:
        yield
    except PlanningError as exc:
        raise InvalidArgument(exc.problem, field=exc.field) from None


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
    uq_methods: tuple[str, ...] = ("bins",)  # what ``options.uq_method`` may ask for: the bundle's methods
    options: Mapping[str, IntRange] = field(default_factory=lambda: option_ranges(DEFAULT_MAXIMA))  # by name

    @classmethod
    def build(cls, config: ServiceConfig, info: ModelInfo) -> Limits:
        """From the service's config and what the planner offers (cameras, history span, maxima, modes, uncertainty
        methods)."""
        model_history = info.history * info.frame_stride
        max_history = model_history if config.max_history is None else min(config.max_history, model_history)
        return cls(
            cameras=tuple(info.cameras),
            ranges=field_ranges(info.maxima, config.max_image_size[1]),
            max_history=max_history,
            max_image_size=tuple(config.max_image_size),
            max_instruction_chars=config.max_instruction_chars,
            max_session_id_chars=config.max_session_id_chars,
            max_nominal_steps=config.max_nominal_steps,
            modes=tuple(info.modes),
            uq_methods=tuple(info.uq_methods),
            options=option_ranges(info.maxima),
        )

    @property
    def mode_refusal(self) -> str:
        """Why a mode outside :attr:`modes` is refused, after its name."""
        return f"is not offered by this server (its model bundle has no policy; GetInfo modes: {', '.join(self.modes)})"

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
    reference: np.ndarray | None  # (R, 7) cartesian_position + gripper
    options: PlanOptions  # without deadline_s; the worker sets it when the plan starts


def check_session_id(session_id: object, limits: Limits) -> str:
    if not isinstance(session_id, str):
        raise InvalidArgument("expected a string", field="session_id")
    if len(session_id) > limits.max_session_id_chars:
        raise InvalidArgument(
            f"{len(session_id)} characters, at most {limits.max_session_id_chars}", field="session_id"
        )
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
    with _wire_fields():
        state = rules.check_state(
            obs.state.joint_position,
            obs.state.cartesian_position,
            obs.state.gripper_position,
            field="observation.state",
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
    return CheckedCall(
        instruction=instruction,
        state=state,
        nominal=_nominal(call, limits),
        reference=_reference(call, limits),
        options=_options(call, limits),
    )


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
    with _wire_fields():
        return rules.check_number(value, bounds, field)


def _nominal(call: PlanCall, limits: Limits) -> np.ndarray | None:
    with _wire_fields():
        return rules.check_nominal(
            call.nominal,
            call.nominal_space,
            field="nominal",
            space_field="nominal.space",
            max_steps=limits.max_nominal_steps,
        )


def _reference(call: PlanCall, limits: Limits) -> np.ndarray | None:
    with _wire_fields():
        return rules.check_nominal(
            call.reference,
            "cartesian_position",
            field="reference",
            space_field="reference",
            max_steps=limits.max_nominal_steps,
        )


def _options(call: PlanCall, limits: Limits) -> PlanOptions:
    o = call.options
    options = PlanOptions(
        num_proposals=o.num_proposals,
        refine_iters=o.refine_iters,
        flow_steps=o.flow_steps,
        nominal_perturbations=o.nominal_perturbations,
        seed=o.seed,
        return_heatmaps=bool(o.return_heatmaps),
        policy_samples=o.policy_samples,
        policy_perturbations=o.policy_perturbations,
        mode=o.mode,
        uq_method=o.uq_method,
    )
    with _wire_fields():
        return rules.check_options(
            options, limits.options, limits.modes, limits.mode_refusal, field="options", uq_methods=limits.uq_methods
        )
