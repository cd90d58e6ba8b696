"""The action adapter: joint velocities -> feasible joint positions -> ``cartesian_position`` actions.

The paper's proposers work in velocity space while the world model takes absolute end-effector poses
(Section 3.4): joint velocities are integrated at the control rate into joint positions (the "dynamics
action adapter") and forward kinematics gives the poses. Here the integration clips every step to the
Panda's joint velocity limits (scaling the whole vector, so its direction is kept) and to its joint
position limits less a margin.

Cartesian chunks (a nominal chunk from a policy, its perturbations) are made feasible by
:meth:`ActionAdapter.feasible_cartesian`: per step, translation and rotation are shortened to the per-step
limits and the position is clamped into the workspace box (sequentially, so each step is measured from the
previous feasible one), then inverse kinematics from the previous configuration, whose joint-limited
solution is mapped back through forward kinematics; a step the arm cannot reach within its joint limits
holds the last reachable configuration instead. What comes out is what the arm can actually reach.

DROID's ``joint_velocity`` action space (what pi0.5-DROID returns) is normalised: each joint in [-1, 1]
times DROID's ``max_joint_delta`` = 0.2 rad per 15 Hz step (``RobotIKSolver``), i.e. up to 3 rad/s before
the velocity limits apply.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from vidplan_server.planning.limits import SafetyLimits
from vidplan_server.robot.panda import JOINT_VEL_MAX, PandaKinematics


@dataclass(frozen=True)
class AdapterConfig:
    dt_s: float = 1.0 / 15.0
    joint_margin_rad: float = 0.05  # integrated joints stay this far inside the joint limits
    workspace_margin_m: float = 0.01  # built chunks stay this far inside the workspace box
    droid_max_joint_delta_rad: float = 0.2  # DROID joint_velocity action 1.0 = this many rad per step


class ActionAdapter:
    def __init__(self, kinematics: PandaKinematics, limits: SafetyLimits, config: AdapterConfig = AdapterConfig()):
        self.kin = kinematics
        self.limits = limits
        self.config = config
        m = config.joint_margin_rad
        self.q_lo = np.asarray(limits.joint_lower_rad) + m
        self.q_hi = np.asarray(limits.joint_upper_rad) - m
        wm = config.workspace_margin_m
        self.box_lo = np.asarray(limits.workspace_min_m) + wm
        self.box_hi = np.asarray(limits.workspace_max_m) - wm

    def step_joints(self, q: np.ndarray, qdot: np.ndarray) -> np.ndarray:
        """One control step: joint velocity (7,) rad/s, scaled into the velocity limits, integrated, clipped."""
        over = np.max(np.abs(qdot) / JOINT_VEL_MAX)
        if over > 1.0:
            qdot = qdot / over
        return np.clip(q + qdot * self.config.dt_s, self.q_lo, self.q_hi)

    def in_box(self, position: np.ndarray) -> bool:
        return bool(np.all(position >= self.box_lo) and np.all(position <= self.box_hi))

    def integrate_joint_velocities(self, q0: np.ndarray, qdot: np.ndarray) -> np.ndarray:
        """Joint velocities (S, 7) rad/s from configuration q0 (7,) -> joint positions (S, 7)."""
        out = np.empty((len(qdot), 7))
        q = np.asarray(q0, dtype=np.float64)
        for s, v in enumerate(np.asarray(qdot, dtype=np.float64)):
            q = self.step_joints(q, v)
            out[s] = q
        return out

    def droid_joint_velocity_to_rad_s(self, action: np.ndarray) -> np.ndarray:
        """DROID normalised joint_velocity actions (..., 7) in [-1, 1] -> rad/s."""
        return np.clip(action, -1.0, 1.0) * self.config.droid_max_joint_delta_rad / self.config.dt_s

    def feasible_cartesian(
        self, targets: np.ndarray, pose0: np.ndarray, q0: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pose targets + gripper (S, 7) -> (feasible actions (S, 7), joint positions (S, 7)).

        Starting from the current pose0 (6,) and configuration q0 (7,).
        """
        lim = self.limits
        # The step towards the goal is shortened by the IK tolerance too: IK may land anywhere within that
        # tolerance of its goal, and the step is measured between the poses reached (closed-loop runs saw a
        # policy chunk refused for 0.0751 m > 0.075 m before this margin).
        max_t = (lim.max_translation_per_step_m - lim.ik_tolerance_m) * (1 - 1e-3)
        max_r = (lim.max_rotation_per_step_rad - lim.ik_tolerance_rad) * (1 - 1e-3)
        prev_p = np.asarray(pose0[:3], dtype=np.float64)
        prev_R = Rotation.from_euler("xyz", pose0[3:6])
        # A robot that reports joints a hair past a limit (a simulated one did) would otherwise make every held
        # step infeasible: hold the nearest configuration inside the limits instead.
        q = np.clip(np.asarray(q0, dtype=np.float64), self.q_lo, self.q_hi)
        actions = np.empty((len(targets), 7))
        joints = np.empty((len(targets), 7))
        for s, target in enumerate(np.asarray(targets, dtype=np.float64)):
            d = target[:3] - prev_p
            n = np.linalg.norm(d)
            p = prev_p + (d * (max_t / n) if n > max_t else d)
            p = np.clip(p, self.box_lo, self.box_hi)
            rel = (prev_R.inv() * Rotation.from_euler("xyz", target[3:6])).as_rotvec()
            angle = np.linalg.norm(rel)
            R = prev_R * Rotation.from_rotvec(rel * (max_r / angle) if angle > max_r else rel)
            goal = np.concatenate([p, R.as_euler("xyz")])
            q_new = np.clip(self.kin.ik(goal, q).q, self.q_lo, self.q_hi)
            reached = self.kin.fk_pose(q_new)
            if self._reaches(reached, goal):
                q = q_new
            else:  # out of reach within the joint limits: hold the last reachable configuration
                reached = self.kin.fk_pose(q)
            actions[s, :6] = reached
            actions[s, 6] = np.clip(target[6], *lim.gripper_range)
            joints[s] = q
            prev_p, prev_R = reached[:3], Rotation.from_euler("xyz", reached[3:6])
        return actions, joints

    def _reaches(self, reached: np.ndarray, goal: np.ndarray) -> bool:
        pos = np.linalg.norm(reached[:3] - goal[:3])
        rot = (Rotation.from_euler("xyz", reached[3:6]).inv() * Rotation.from_euler("xyz", goal[3:6])).magnitude()
        return bool(pos <= self.limits.ik_tolerance_m and rot <= self.limits.ik_tolerance_rad)

    def joints_to_actions(self, joints: np.ndarray, gripper: np.ndarray) -> np.ndarray:
        """Joint positions (S, 7) and gripper (S,) -> actions (S, 7) by forward kinematics."""
        poses = np.stack([self.kin.fk_pose(q) for q in joints])
        return np.concatenate([poses, np.asarray(gripper, dtype=np.float64).reshape(-1, 1)], 1)
