"""Franka Panda kinematics shared by the simulator and the planner.

Built on roboticstoolbox-python's modified-DH Panda (the C++ ETS backend makes forward
kinematics ~40 µs and Levenberg-Marquardt IK ~30 µs per call on one CPU core).

Decisions written down here once:

* **End-effector frame.** ``cartesian_position`` is the pose of the tool-centre point (TCP)
  between the fingertips, i.e. the flange (``panda_link8``) translated 0.105 m along its z axis
  and rotated -45° about it. This is exactly the ``panda_grasptarget`` link of the Panda URDF
  that ships in ``pybullet_data``; ``tests/robot/test_panda.py`` checks the two agree within
  1 mm. (roboticstoolbox's default tool is 0.1034 m; we use the URDF's value so that the
  simulator and the planner share one frame.)
* **Orientation.** roll, pitch, yaw are extrinsic XYZ Euler angles in radians
  (``R = Rz(yaw) @ Ry(pitch) @ Rx(roll)``), as DROID stores them. A gripper pointing straight
  down has roll = ±π.
* **Gripper.** ``gripper_position`` 0 = open (fingers 0.08 m apart), 1 = closed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

FLANGE_TO_TCP_M = 0.105
FINGER_MAX_WIDTH_M = 0.08

# Panda joint limits (rad) and maximum joint velocities (rad/s) from Franka's datasheet; the
# same numbers as the `limit` tags of the URDF's soft limits.
JOINT_LOWER = np.array([-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973])
JOINT_UPPER = np.array([2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973])
JOINT_VEL_MAX = np.array([2.175, 2.175, 2.175, 2.175, 2.61, 2.61, 2.61])

# A comfortable home configuration: TCP about 0.5 m in front of the base, 0.35 m above the
# table, gripper pointing down.
Q_HOME = np.array([0.0, -0.35, 0.0, -2.3, 0.0, 1.95, np.pi / 4])


def pose_to_matrix(pose: np.ndarray) -> np.ndarray:
    """``(..., 6)`` [x, y, z, roll, pitch, yaw] -> ``(..., 4, 4)`` homogeneous transform."""
    pose = np.asarray(pose, dtype=np.float64)
    T = np.zeros(pose.shape[:-1] + (4, 4))
    T[..., :3, :3] = (
        Rotation.from_euler("xyz", pose[..., 3:].reshape(-1, 3)).as_matrix().reshape(pose.shape[:-1] + (3, 3))
    )
    T[..., :3, 3] = pose[..., :3]
    T[..., 3, 3] = 1.0
    return T


def matrix_to_pose(T: np.ndarray) -> np.ndarray:
    """``(..., 4, 4)`` homogeneous transform -> ``(..., 6)`` [x, y, z, roll, pitch, yaw]."""
    T = np.asarray(T, dtype=np.float64)
    euler = Rotation.from_matrix(T[..., :3, :3].reshape(-1, 3, 3)).as_euler("xyz")
    return np.concatenate([T[..., :3, 3], euler.reshape(T.shape[:-2] + (3,))], axis=-1)


def gripper_width_to_position(width_m: float) -> float:
    """Finger opening in metres -> DROID gripper position (0 open, 1 closed)."""
    return float(np.clip(1.0 - width_m / FINGER_MAX_WIDTH_M, 0.0, 1.0))


@dataclass
class IKResult:
    q: np.ndarray
    success: bool
    residual: float


class PandaKinematics:
    """Forward kinematics, geometric Jacobian and IK of the Panda TCP in the base frame."""

    def __init__(self) -> None:
        import roboticstoolbox as rtb  # heavy import, kept local so `import vidplan_server` is cheap
        from spatialmath import SE3

        robot = rtb.models.DH.Panda()
        robot.tool = SE3(0.0, 0.0, FLANGE_TO_TCP_M) * SE3.Rz(-np.pi / 4)
        self._ets = robot.ets()
        self.lower = JOINT_LOWER.copy()
        self.upper = JOINT_UPPER.copy()

    def fk(self, q: np.ndarray) -> np.ndarray:
        """Joint angles ``(7,)`` rad -> TCP transform ``(4, 4)`` in the base frame (m)."""
        return np.asarray(self._ets.fkine(np.asarray(q, dtype=np.float64)).A)

    def fk_pose(self, q: np.ndarray) -> np.ndarray:
        """Joint angles ``(7,)`` -> ``cartesian_position`` ``(6,)``."""
        return matrix_to_pose(self.fk(q))

    def jacobian(self, q: np.ndarray) -> np.ndarray:
        """Geometric Jacobian ``(6, 7)`` of the TCP in the base frame: rows vx, vy, vz, wx, wy, wz."""
        return np.asarray(self._ets.jacob0(np.asarray(q, dtype=np.float64)))

    def ik(self, target: np.ndarray, q0: np.ndarray, tol: float = 1e-6) -> IKResult:
        """Solve for joints reaching ``target`` (a ``(6,)`` pose or a ``(4, 4)`` transform).

        Starts from ``q0`` (the current configuration) so consecutive solutions stay on one
        branch; the result is clipped into the joint limits.
        """
        target = np.asarray(target, dtype=np.float64)
        if target.shape == (6,):
            target = pose_to_matrix(target)
        sol = self._ets.ik_LM(
            target, q0=np.asarray(q0, dtype=np.float64), ilimit=60, slimit=1, tol=tol, joint_limits=True
        )
        q = np.clip(np.asarray(sol.q, dtype=np.float64), self.lower, self.upper)
        return IKResult(q=q, success=bool(sol.success), residual=float(sol.residual))
