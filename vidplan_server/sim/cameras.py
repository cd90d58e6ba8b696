"""The three DROID cameras of the simulated scene and their rendering.

Placement follows DROID's rig: two exterior cameras on stands to the left and right of the
robot, behind the workspace's front edge, looking at the table; a wrist camera fixed to the
hand, offset from the gripper axis, looking along the gripper so the fingertips sit at the
bottom of its image. Poses jitter a little per episode (a few cm, a few degrees), as DROID's
rigs were re-placed between scenes.

Rendering uses PyBullet's CPU TinyRenderer (`ER_TINY_RENDERER`), which runs headless.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vidplan_server.data.schema import CAMERA_NAMES
from vidplan_server.sim.bullet import p

# Exterior cameras: eye and look-at point in the robot base frame (m).
_EXTERIOR_NOMINAL = {
    "exterior_image_1_left": (np.array([0.40, -0.58, 0.42]), np.array([0.55, 0.0, 0.05])),
    "exterior_image_2_left": (np.array([0.40, 0.58, 0.42]), np.array([0.55, 0.0, 0.05])),
}
# Wrist camera in the TCP frame (z along the gripper, fingers close along y), metres.
_WRIST_EYE_TCP = np.array([-0.075, 0.0, -0.11])
_WRIST_TARGET_TCP = np.array([0.0, 0.0, 0.20])
_WRIST_UP_TCP = np.array([-1.0, 0.0, 0.0])

EXTERIOR_VFOV_DEG = 45.0  # roughly a ZED 2 at 16:9, kept for square crops too
WRIST_VFOV_DEG = 70.0


@dataclass(frozen=True)
class CameraRig:
    """Per-episode camera placement: exterior eyes/targets and the wrist offset (base / TCP frame)."""

    exterior: dict[str, tuple[np.ndarray, np.ndarray]]
    wrist_eye_tcp: np.ndarray
    wrist_target_tcp: np.ndarray
    light_direction: np.ndarray

    @staticmethod
    def sample(rng: np.random.Generator, jitter: float = 1.0) -> CameraRig:
        exterior = {
            name: (eye + rng.normal(0.0, 0.03 * jitter, 3), target + rng.normal(0.0, 0.02 * jitter, 3))
            for name, (eye, target) in _EXTERIOR_NOMINAL.items()
        }
        light = np.array([0.4, 0.2, 1.0]) + rng.normal(0.0, 0.15 * jitter, 3)
        return CameraRig(
            exterior=exterior,
            wrist_eye_tcp=_WRIST_EYE_TCP + rng.normal(0.0, 0.004 * jitter, 3),
            wrist_target_tcp=_WRIST_TARGET_TCP + rng.normal(0.0, 0.01 * jitter, 3),
            light_direction=light / np.linalg.norm(light),
        )


def _projection(height: int, width: int, vfov_deg: float) -> list[float]:
    return p.computeProjectionMatrixFOV(fov=vfov_deg, aspect=width / height, nearVal=0.02, farVal=3.0)


def render_views(
    client: int, rig: CameraRig, tcp_T: np.ndarray, height: int, width: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Render the three views.

    Args:
        tcp_T: ``(4, 4)`` TCP pose in the base frame (the wrist camera rides on it).

    Returns:
        ``images[name]``: ``(height, width, 3)`` uint8 RGB; ``segmentation[name]``:
        ``(height, width)`` int32 PyBullet body ids (-1 for background).
    """
    images: dict[str, np.ndarray] = {}
    segmentation: dict[str, np.ndarray] = {}
    for name in CAMERA_NAMES:
        if name in rig.exterior:
            eye, target = rig.exterior[name]
            up = np.array([0.0, 0.0, 1.0])
            vfov = EXTERIOR_VFOV_DEG
        else:
            R, t = tcp_T[:3, :3], tcp_T[:3, 3]
            eye = R @ rig.wrist_eye_tcp + t
            target = R @ rig.wrist_target_tcp + t
            up = R @ _WRIST_UP_TCP
            vfov = WRIST_VFOV_DEG
        view = p.computeViewMatrix(eye.tolist(), target.tolist(), up.tolist())
        _, _, rgba, _, seg = p.getCameraImage(
            width,
            height,
            viewMatrix=view,
            projectionMatrix=_projection(height, width, vfov),
            renderer=p.ER_TINY_RENDERER,
            lightDirection=rig.light_direction.tolist(),
            shadow=1,
            physicsClientId=client,
        )
        images[name] = np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[..., :3].copy()
        segmentation[name] = np.asarray(seg, dtype=np.int32).reshape(height, width)
    return images, segmentation
