"""DROID's ``RobotEnv`` interface as the robot loop uses it; every DROID field name lives here.

``env.get_observation()`` returns a dict shaped like DROID's::

    {
        "image": {camera_key: (H, W, 3) uint8 RGB, ...},        # IMAGE_KEY
        "robot_state": {                                       # STATE_KEY
            "joint_positions": [7] rad,                        # JOINT_POSITIONS_KEY
            "cartesian_position": [6] x, y, z m, roll, pitch, yaw rad (extrinsic XYZ),  # CARTESIAN_POSITION_KEY
            "gripper_position": float in [0, 1], 1 = closed,   # GRIPPER_POSITION_KEY
        },
        ...                                                    # anything else is ignored
    }

``env.update_robot(action, action_space="cartesian_position", blocking=False)`` commands one 7-vector: the
absolute TCP pose target (6) and the gripper target (1).

Camera keys default to the wire's DROID names (``exterior_image_1_left``, ...). A real DROID ``RobotEnv`` keys its
images by camera serial (``"<serial>_left"``) and returns BGRA: pass ``camera_keys`` to map wire names to those keys
and convert to RGB in a thin wrapper around the env.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from vidplan_client.contract import ACTION_SPACE, CAMERA_NAMES

IMAGE_KEY = "image"
STATE_KEY = "robot_state"
JOINT_POSITIONS_KEY = "joint_positions"
CARTESIAN_POSITION_KEY = "cartesian_position"
GRIPPER_POSITION_KEY = "gripper_position"
TIMESTAMP_KEY = "timestamp"  # not read by the loop; the simulated env puts its step and time there


class RobotEnvLike(Protocol):
    """The two methods of DROID's ``RobotEnv`` the loop calls."""

    def get_observation(self) -> dict[str, Any]: ...

    def update_robot(self, action: np.ndarray, action_space: str = ACTION_SPACE, blocking: bool = False) -> Any: ...


@dataclass(frozen=True)
class DroidFrame:
    """One observation read out of a DROID observation dict."""

    images: dict[str, np.ndarray]  # wire camera name -> (H, W, 3) uint8 RGB
    joint_position: np.ndarray  # (7,) rad
    cartesian_position: np.ndarray  # (6,) m, rad
    gripper_position: float  # [0, 1], 1 = closed

    def hold_action(self) -> np.ndarray:
        """(7,) the observed pose and gripper as a target (the robot loop's hold before it has commanded anything)."""
        return np.concatenate([self.cartesian_position, [self.gripper_position]])


def euler_xyz_to_matrix(euler: np.ndarray) -> np.ndarray:
    """(3,) roll, pitch, yaw rad (extrinsic XYZ, DROID's convention) -> (3, 3) rotation Rz(yaw) Ry(pitch) Rx(roll)."""
    roll, pitch, yaw = (float(a) for a in np.asarray(euler, dtype=np.float64).reshape(3))
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cr, -sr], [0.0, sr, cr]])
    ry = np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]])
    rz = np.array([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]])
    return rz @ ry @ rx


def pose_step(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Translation (m, norm of xyz) and geodesic rotation (rad, in [0, pi]) from pose ``a`` to pose ``b``.

    Poses are DROID ``cartesian_position`` vectors (the first 6 values are used, so 7-vector targets work too).
    The rotation is the angle of ``R_a^T R_b``: what DROID's per-step limit bounds, and it does not jump when roll
    wraps at +-pi.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    translation = float(np.linalg.norm(b[:3] - a[:3]))
    relative = euler_xyz_to_matrix(a[3:6]).T @ euler_xyz_to_matrix(b[3:6])
    rotation = float(np.arccos(np.clip((np.trace(relative) - 1.0) / 2.0, -1.0, 1.0)))
    return translation, rotation


def observation_dict(
    images: Mapping[str, np.ndarray],
    joint_positions: np.ndarray,
    cartesian_position: np.ndarray,
    gripper_position: float,
    timestamp: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The DROID observation dict :func:`read_observation` reads (what a ``RobotEnv`` stand-in returns)."""
    obs: dict[str, Any] = {
        IMAGE_KEY: dict(images),
        STATE_KEY: {
            JOINT_POSITIONS_KEY: joint_positions,
            CARTESIAN_POSITION_KEY: cartesian_position,
            GRIPPER_POSITION_KEY: gripper_position,
        },
    }
    if timestamp is not None:
        obs[TIMESTAMP_KEY] = dict(timestamp)
    return obs


def read_observation(
    obs: Mapping[str, Any], camera_keys: Mapping[str, str] | None = None, cameras: tuple[str, ...] = CAMERA_NAMES
) -> DroidFrame:
    """DROID observation dict -> :class:`DroidFrame`. ``camera_keys``: wire name -> key in ``obs["image"]``."""
    keys = {c: (camera_keys or {}).get(c, c) for c in cameras}
    try:
        images_in, state = obs[IMAGE_KEY], obs[STATE_KEY]
        images = {c: np.asarray(images_in[k]) for c, k in keys.items()}
        joints = np.asarray(state[JOINT_POSITIONS_KEY], dtype=np.float64).reshape(-1)
        pose = np.asarray(state[CARTESIAN_POSITION_KEY], dtype=np.float64).reshape(-1)
        gripper = float(np.asarray(state[GRIPPER_POSITION_KEY], dtype=np.float64).reshape(-1)[0])
    except KeyError as e:
        wanted = [f"{IMAGE_KEY}/{k}" for k in keys.values()] + [
            f"{STATE_KEY}/{k}" for k in (JOINT_POSITIONS_KEY, CARTESIAN_POSITION_KEY, GRIPPER_POSITION_KEY)
        ]
        raise KeyError(f"DROID observation lacks {e}; expected {', '.join(wanted)}") from e
    if joints.shape != (7,) or pose.shape != (6,):
        raise ValueError(
            f"robot_state: joint_positions must have 7 values and cartesian_position 6, "
            f"got {joints.shape} and {pose.shape}"
        )
    return DroidFrame(images=images, joint_position=joints, cartesian_position=pose, gripper_position=gripper)
