"""What a valid request is, defined once: the planner checks its :class:`PlanRequest` here, and the serving layer
checks the same fields of a wire request with the same functions (under the wire's field names) before it stores
anything.

* :func:`check_request` is the planner's whole check (instruction, history frames, robot state, options, nominal
  chunk); it returns the counts the plan uses, defaults filled in.
* The parts (:func:`check_state`, :func:`check_nominal`, :func:`check_options`, :func:`check_number`,
  :func:`check_vector`) take the field name to report, so a transport names its own paths
  (``observation.state.gripper_position`` on the wire, ``state.gripper_position`` here).
* The ranges: :data:`STATE_RANGES`, :data:`NOMINAL_RANGES` and :func:`option_ranges` (the lower bounds of the
  options and the planner's maxima); ``proto/vidplan/v1/vidplan.proto`` states the same numbers in its comments
  (a test compares them).

Every failure is a :class:`~vidplan_server.planning.types.PlanningError` whose message starts with the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from vidplan_server.planning.types import (
    MODES,
    NOMINAL_SPACES,
    UQ_METHODS,
    ModelInfo,
    OptionCounts,
    PlanningError,
    PlanOptions,
    PlanRequest,
    RobotState,
)
from vidplan_server.robot.panda import JOINT_LOWER, JOINT_UPPER

UINT64_MAX = 2**64 - 1
#: The per-request counts of :class:`PlanOptions` that may be unset (unset = the planner's default).
OPTIONAL_COUNTS = (
    "num_proposals",
    "refine_iters",
    "flow_steps",
    "nominal_perturbations",
    "policy_samples",
    "policy_perturbations",
)
#: How the planner explains a mode its bundle does not offer ("policy" without a policy module).
PLANNER_MODE_REFUSAL = "needs a checkpoint with a policy module (train one with `vidplan train policy`)"


def show(value: object, limit: int = 40) -> str:
    """A client-supplied value for a message or a log line: repr'd (so control characters are escaped), cut."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "...'"


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
#: The valid range of every number the planner takes with a request, defined once: :func:`check_request` checks
#: against it, and so does the serving layer (its table in ``serving/validation.py`` maps these onto wire fields
#: before anything is stored); ``proto/vidplan/v1/vidplan.proto`` states the same numbers. Joints: the Panda's
#: limits widened by 0.1 rad (readings just past a limit are real; degrees or garbage are not); positions: 2 m
#: (the Panda reaches 0.855 m); Euler angles within one turn either way; gripper 0 (open) to 1 (closed);
#: DROID's normalised joint velocities in [-1, 1].
STATE_RANGES = {
    "joint_position": Range(
        tuple(round(float(x) - 0.1, 4) for x in JOINT_LOWER), tuple(round(float(x) + 0.1, 4) for x in JOINT_UPPER)
    ),
    "cartesian_position": Range((-2.0,) * 3 + (-_TWO_PI,) * 3, (2.0,) * 3 + (_TWO_PI,) * 3),
    "gripper_position": Range(0.0, 1.0),
}
NOMINAL_RANGES = {  # per column of a nominal chunk's rows
    "cartesian_position": Range((-2.0,) * 3 + (-_TWO_PI,) * 3 + (0.0,), (2.0,) * 3 + (_TWO_PI,) * 3 + (1.0,)),
    "joint_velocity": Range((-1.0,) * 7 + (0.0,), (1.0,) * 8),
}


NOMINAL_WIDTH = {space: len(NOMINAL_RANGES[space].low) for space in NOMINAL_SPACES}


@dataclass(frozen=True)
class IntRange:
    """The valid closed interval of an integer field (exact for uint64)."""

    low: int
    high: int

    def violation(self, value: int) -> str | None:
        return None if self.low <= value <= self.high else f"{value} is outside [{self.low}, {self.high}]"

    def text(self) -> str:
        return f"[{self.low}, {self.high}]"


def option_ranges(maxima: OptionCounts) -> dict[str, IntRange]:
    """The valid range of every integer option, by :class:`PlanOptions` field name, for a planner's maxima."""
    n_max = maxima.num_proposals
    return {
        "num_proposals": IntRange(1, n_max),
        "refine_iters": IntRange(0, maxima.refine_iters),
        "flow_steps": IntRange(1, maxima.flow_steps),
        "nominal_perturbations": IntRange(0, n_max - 1),
        "policy_samples": IntRange(0, n_max),
        "policy_perturbations": IntRange(0, n_max),
        "seed": IntRange(0, UINT64_MAX),
    }


# ---------------------------------------------------------------------------------------- parts
def check_number(value: object, bounds: Range | IntRange, field: str) -> Any:
    """``value`` as a number of the range's kind (int for :class:`IntRange`), or PlanningError naming ``field``."""
    if isinstance(bounds, IntRange):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise PlanningError(f"expected an integer, got {show(value)}", field=field)
        value = int(value)
    else:
        try:
            value = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise PlanningError(f"expected a number, got {show(value)}", field=field) from None
        if not math.isfinite(value):
            raise PlanningError(f"must be finite, got {value}", field=field)
    problem = bounds.violation(value)
    if problem is not None:
        raise PlanningError(problem, field=field)
    return value


def check_vector(values: object, bounds: Range, length: int, field: str) -> np.ndarray:
    """``values`` as a finite float64 vector of ``length`` within ``bounds``."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise PlanningError(f"expected {length} numbers", field=field) from None
    if arr.shape != (length,):
        raise PlanningError(f"{arr.size} values, expected {length}", field=field)
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise PlanningError(f"element {bad[0]} is {arr[bad[0]]}, must be finite", field=field)
    problem = bounds.violation(arr)
    if problem is not None:
        raise PlanningError(problem, field=field)
    return arr


def check_state(
    joint_position: object, cartesian_position: object, gripper_position: object, field: str = "state"
) -> RobotState:
    """The robot state within :data:`STATE_RANGES`; fields are reported as ``<field>.joint_position`` etc."""
    return RobotState(
        joint_position=check_vector(joint_position, STATE_RANGES["joint_position"], 7, f"{field}.joint_position"),
        cartesian_position=check_vector(
            cartesian_position, STATE_RANGES["cartesian_position"], 6, f"{field}.cartesian_position"
        ),
        gripper_position=check_number(gripper_position, STATE_RANGES["gripper_position"], f"{field}.gripper_position"),
    )


def check_nominal(
    nominal: object,
    space: object,
    field: str = "nominal",
    space_field: str = "nominal_space",
    max_steps: int | None = None,
) -> np.ndarray | None:
    """A nominal chunk as (steps, width) float64 rows within :data:`NOMINAL_RANGES` of ``space``; None when no
    chunk is given (``None`` or no rows). The space is checked either way."""
    if space not in NOMINAL_WIDTH:
        raise PlanningError(f"{show(space)} is not one of {', '.join(NOMINAL_WIDTH)}", field=space_field)
    if nominal is None or len(nominal) == 0:  # type: ignore[arg-type]
        return None
    width = NOMINAL_WIDTH[space]
    if max_steps is not None and len(nominal) > max_steps:  # type: ignore[arg-type]
        raise PlanningError(f"{len(nominal)} steps, at most {max_steps}", field=field)  # type: ignore[arg-type]
    try:
        arr = np.asarray(nominal, dtype=np.float64)
    except (TypeError, ValueError):
        raise PlanningError(f"expected rows of {width} numbers (ragged?)", field=field) from None
    if arr.ndim != 2 or arr.shape[1] != width:
        raise PlanningError(f"shape {arr.shape}, expected (steps, {width}) for {space}", field=field)
    if not np.isfinite(arr).all():
        row, col = np.argwhere(~np.isfinite(arr))[0]
        raise PlanningError(f"element [{row}, {col}] is {arr[row, col]}, must be finite", field=field)
    problem = NOMINAL_RANGES[space].violation(arr)
    if problem is not None:
        raise PlanningError(f"{problem} ({space})", field=field)
    return arr


def check_options(
    options: PlanOptions,
    ranges: Mapping[str, IntRange],
    modes: tuple[str, ...],
    mode_refusal: str = PLANNER_MODE_REFUSAL,
    field: str = "options",
    uq_methods: tuple[str, ...] = UQ_METHODS,
) -> PlanOptions:
    """Every option within ``ranges`` (:func:`option_ranges`), a mode among ``modes`` (the offered ones;
    ``mode_refusal`` says why another is not) and a ``uq_method`` (if set) among ``uq_methods`` (the offered
    ones). Returns the options with the seed as a Python int."""
    for name in OPTIONAL_COUNTS:
        value = getattr(options, name)
        if value is not None:
            check_number(value, ranges[name], f"{field}.{name}")
    seed = check_number(options.seed, ranges["seed"], f"{field}.seed")
    deadline = options.deadline_s
    if deadline is not None and not (isinstance(deadline, int | float) and math.isfinite(deadline) and deadline >= 0):
        raise PlanningError(f"must be a finite number >= 0, got {show(deadline)}", field=f"{field}.deadline_s")
    if options.mode not in MODES:
        raise PlanningError(f"{show(options.mode)} is not one of {', '.join(MODES)}", field=f"{field}.mode")
    if options.mode not in modes:
        raise PlanningError(f"{options.mode!r} {mode_refusal}", field=f"{field}.mode")
    method = options.uq_method
    if method is not None and method not in UQ_METHODS:
        raise PlanningError(f"{show(method)} is not one of {', '.join(UQ_METHODS)}", field=f"{field}.uq_method")
    if method is not None and method not in uq_methods:
        raise PlanningError(
            f"{method!r} needs its module in the checkpoint (`vidplan train c3` / `vidplan train squbed`); "
            f"offered: {', '.join(uq_methods)}",
            field=f"{field}.uq_method",
        )
    return options if type(options.seed) is int else replace(options, seed=seed)


def check_history(history: object, frames: int, views: int) -> np.ndarray:
    """The planner's frames: uint8 ``(T, V, H, W, 3)`` with the model's T and V, H and W at least 8."""
    if not isinstance(history, np.ndarray) or history.dtype != np.uint8 or history.ndim != 5:
        got = f"{getattr(history, 'dtype', type(history).__name__)} {getattr(history, 'shape', '')}"
        raise PlanningError(f"must be a uint8 array (T, V, H, W, 3), got {got}", field="history")
    if history.shape[0] != frames or history.shape[1] != views or history.shape[4] != 3 or min(history.shape[2:4]) < 8:
        raise PlanningError(
            f"expected ({frames}, {views}, H, W, 3) with H, W >= 8, got {history.shape}", field="history"
        )
    return history


def resolve_counts(options: PlanOptions, defaults: OptionCounts) -> OptionCounts:
    """The counts a plan runs with: the request's, or the planner's default where unset."""
    return OptionCounts(
        num_proposals=defaults.num_proposals if options.num_proposals is None else int(options.num_proposals),
        refine_iters=defaults.refine_iters if options.refine_iters is None else int(options.refine_iters),
        flow_steps=defaults.flow_steps if options.flow_steps is None else int(options.flow_steps),
    )


# ---------------------------------------------------------------------------------------- the whole request
def check_request(req: PlanRequest, info: ModelInfo) -> OptionCounts:
    """Everything the planner takes, against what ``info`` offers; returns the counts the plan runs with."""
    if not isinstance(req.instruction, str) or not req.instruction.strip():
        raise PlanningError("must be a non-empty string", field="instruction")
    check_history(req.history, info.history, len(info.cameras))
    s = req.state
    check_state(s.joint_position, s.cartesian_position, s.gripper_position)
    check_options(req.options, option_ranges(info.maxima), info.modes, uq_methods=info.uq_methods)
    check_nominal(req.nominal, req.nominal_space)
    check_nominal(req.reference, "cartesian_position", field="reference", space_field="reference")
    return resolve_counts(req.options, info.defaults)
