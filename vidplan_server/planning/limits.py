"""Safety limits every returned chunk must satisfy, and the checks that enforce them.

Defaults come from the real stack:

- workspace box [0.1, -0.4, -0.05] to [1.0, 0.4, 1.0] m in the robot base frame (Polymetis' Franka config);
- at most 0.075 m of translation and 0.15 rad of rotation per 15 Hz control step (DROID's
  ``RobotIKSolver``: ``max_lin_delta``, ``max_rot_delta``), the first step measured from the current pose; the
  numbers live in :mod:`vidplan_client.contract`, which the robot loop checks every command against too;
- the Panda's joint limits (checked on the inverse kinematics of every step, solved from the current
  configuration so consecutive solutions stay on one branch);
- gripper in [0, 1].

Rotation change is the geodesic angle ``|log(R_prev^T R_next)|`` (what DROID's limit bounds, in a form that
does not jump when roll wraps at +-pi). A chunk that violates any limit is rejected, never clipped here:
callers that want a feasible chunk build one (:mod:`vidplan_server.planning.proposer`) or project onto
the feasible set (:func:`vidplan_server.planning.refine.project_knots`) before the check. Plain numpy: the
serving layer reads these limits without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation
from vidplan_client.contract import MAX_ROTATION_PER_STEP_RAD, MAX_TRANSLATION_PER_STEP_M

from vidplan_server.robot.panda import JOINT_LOWER, JOINT_UPPER, PandaKinematics


@dataclass(frozen=True)
class SafetyLimits:
    workspace_min_m: tuple[float, float, float] = (0.1, -0.4, -0.05)
    workspace_max_m: tuple[float, float, float] = (1.0, 0.4, 1.0)
    max_translation_per_step_m: float = MAX_TRANSLATION_PER_STEP_M
    max_rotation_per_step_rad: float = MAX_ROTATION_PER_STEP_RAD
    joint_lower_rad: tuple[float, ...] = field(default_factory=lambda: tuple(map(float, JOINT_LOWER)))
    joint_upper_rad: tuple[float, ...] = field(default_factory=lambda: tuple(map(float, JOINT_UPPER)))
    gripper_range: tuple[float, float] = (0.0, 1.0)
    ik_tolerance_m: float = 0.005  # IK of a step must reach its position within this ...
    ik_tolerance_rad: float = 0.02  # ... and its orientation within this
    tolerance: float = 1e-6  # numerical slack on every comparison

    def __post_init__(self) -> None:
        lo, hi = np.asarray(self.workspace_min_m), np.asarray(self.workspace_max_m)
        if lo.shape != (3,) or hi.shape != (3,) or not np.all(hi > lo):
            raise ValueError(
                f"workspace must be 3 mins below 3 maxes, got {self.workspace_min_m} / {self.workspace_max_m}"
            )
        if self.max_translation_per_step_m <= 0 or self.max_rotation_per_step_rad <= 0:
            raise ValueError("per-step limits must be positive")
        if len(self.joint_lower_rad) != 7 or len(self.joint_upper_rad) != 7:
            raise ValueError("joint limits need 7 values each")

    def as_dict(self) -> dict:
        return {
            "workspace_min_m": list(self.workspace_min_m),
            "workspace_max_m": list(self.workspace_max_m),
            "max_translation_per_step_m": self.max_translation_per_step_m,
            "max_rotation_per_step_rad": self.max_rotation_per_step_rad,
            "joint_lower_rad": list(self.joint_lower_rad),
            "joint_upper_rad": list(self.joint_upper_rad),
            "gripper_range": list(self.gripper_range),
        }


def rotation_steps_rad(poses: np.ndarray) -> np.ndarray:
    """Geodesic angle between consecutive orientations of poses (S + 1, 6) -> (S,) rad."""
    R = Rotation.from_euler("xyz", poses[:, 3:6])
    return (R[:-1].inv() * R[1:]).magnitude()


def check_chunk(
    actions: np.ndarray,
    current_pose: np.ndarray,
    limits: SafetyLimits,
    joint_positions: np.ndarray | None = None,
    kinematics: PandaKinematics | None = None,
) -> list[str]:
    """Every violated limit of a chunk, in words (empty = safe).

    actions (S, 7) control-rate pose targets + gripper; current_pose (6,) the pose the chunk starts from;
    joint_positions (S, 7) rad, the IK of ``actions`` (checked against the joint limits, and, with
    ``kinematics``, against the poses they should reach).
    """
    a = np.asarray(actions, dtype=np.float64)
    problems: list[str] = []
    if a.ndim != 2 or a.shape[1] != 7 or len(a) == 0:
        return [f"chunk must have shape (S, 7) with S >= 1, got {a.shape}"]
    if not np.isfinite(a).all():
        return ["chunk has non-finite values"]
    eps = limits.tolerance
    lo, hi = np.asarray(limits.workspace_min_m), np.asarray(limits.workspace_max_m)
    outside = np.nonzero(((a[:, :3] < lo - eps) | (a[:, :3] > hi + eps)).any(1))[0]
    if len(outside):
        problems.append(f"steps {outside.tolist()} leave the workspace box {lo.tolist()}..{hi.tolist()} m")
    poses = np.concatenate([np.asarray(current_pose, dtype=np.float64)[None, :6], a[:, :6]])
    trans = np.linalg.norm(np.diff(poses[:, :3], axis=0), axis=1)
    fast = np.nonzero(trans > limits.max_translation_per_step_m + eps)[0]
    if len(fast):
        problems.append(
            f"steps {fast.tolist()} move {trans[fast].max():.4f} m > {limits.max_translation_per_step_m} m "
            "per step (step 0 from the current pose)"
        )
    rot = rotation_steps_rad(poses)
    turn = np.nonzero(rot > limits.max_rotation_per_step_rad + eps)[0]
    if len(turn):
        problems.append(
            f"steps {turn.tolist()} rotate {rot[turn].max():.4f} rad > {limits.max_rotation_per_step_rad} "
            "rad per step (step 0 from the current pose)"
        )
    g_lo, g_hi = limits.gripper_range
    bad_g = np.nonzero((a[:, 6] < g_lo - eps) | (a[:, 6] > g_hi + eps))[0]
    if len(bad_g):
        problems.append(f"steps {bad_g.tolist()} have gripper outside [{g_lo}, {g_hi}]")
    if joint_positions is not None:
        q = np.asarray(joint_positions, dtype=np.float64)
        jl, ju = np.asarray(limits.joint_lower_rad), np.asarray(limits.joint_upper_rad)
        bad_q = np.nonzero(((q < jl - eps) | (q > ju + eps)).any(1))[0]
        if len(bad_q):
            problems.append(f"steps {bad_q.tolist()} exceed the Panda's joint limits")
        if kinematics is not None:
            reached = np.stack([kinematics.fk_pose(qi) for qi in q])
            pos_err = np.linalg.norm(reached[:, :3] - a[:, :3], axis=1)
            rot_err = (
                Rotation.from_euler("xyz", reached[:, 3:]).inv() * Rotation.from_euler("xyz", a[:, 3:6])
            ).magnitude()
            unreachable = np.nonzero((pos_err > limits.ik_tolerance_m) | (rot_err > limits.ik_tolerance_rad))[0]
            if len(unreachable):
                problems.append(
                    f"steps {unreachable.tolist()} are not reachable within the joint limits "
                    f"(IK error up to {pos_err.max():.4f} m, {rot_err.max():.4f} rad)"
                )
    return problems


def solve_joint_positions(
    kinematics: PandaKinematics, actions: np.ndarray, q0: np.ndarray, seeds: np.ndarray | None = None
) -> np.ndarray:
    """IK of every pose of a chunk (S, 7) -> (S, 7) rad.

    Each step starts from ``seeds[s]`` when given (e.g. the joints of a nearby chunk the arm is known to
    reach: the refined chunk starts from its proposal's), else from the previous step's solution.
    """
    out = np.empty((len(actions), 7))
    q = np.asarray(q0, dtype=np.float64)
    for i, a in enumerate(np.asarray(actions, dtype=np.float64)):
        q = kinematics.ik(a[:6], q if seeds is None else seeds[i]).q
        out[i] = q
    return out
