"""The scripted expert's grasp yaw: a function of what the object looks like, not of how its axes are named."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from vidplan_server.sim.assets import TRAIN_OBJECTS
from vidplan_server.sim.expert import ScriptedExpert, top_down
from vidplan_server.sim.scene import PlacedObject


def _wrap(angle: float) -> float:
    return float((angle + np.pi) % (2 * np.pi) - np.pi)


def _expert(half_extents, obj_yaw: float, wrist_yaw: float) -> tuple[ScriptedExpert, PlacedObject]:
    """An expert over a scene double: one object on the table at ``obj_yaw``, the hand down at ``wrist_yaw``."""
    obj = PlacedObject(body=0, asset=TRAIN_OBJECTS[0], colour="red", half_extents=np.asarray(half_extents, float))
    hand = np.eye(4)
    hand[:3, :3] = top_down(wrist_yaw)
    quat = Rotation.from_euler("xyz", [0.0, 0.0, obj_yaw]).as_quat()
    scene = SimpleNamespace(
        objects=[obj],
        kin=SimpleNamespace(fk=lambda q: hand),
        joint_positions=lambda: np.zeros(7),
        object_pose=lambda o: (np.array([0.5, 0.0, 0.02]), quat),
    )
    task = SimpleNamespace(kind="pick")
    return ScriptedExpert(scene, task, np.random.default_rng(0)), obj


@pytest.mark.parametrize("wrist_yaw", [0.0, 0.7, -1.3])
@pytest.mark.parametrize("obj_yaw", [0.1, 0.6, -0.45])
def test_square_object_grasp_yaw_is_the_same_a_quarter_turn_on(obj_yaw, wrist_yaw):
    """A square object turned by a quarter turn looks the same, so the expert must grasp it at the same yaw,
    never more than an eighth of a turn from the wrist; before, the two answers were a quarter turn apart."""
    square = (0.02, 0.02, 0.02)
    a, obj = _expert(square, obj_yaw, wrist_yaw)
    b, _ = _expert(square, obj_yaw + np.pi / 2, wrist_yaw)
    yaw_a, yaw_b = a._grasp_yaw(obj), b._grasp_yaw(obj)
    assert abs(_wrap(yaw_a - yaw_b)) < 1e-6
    assert abs(_wrap(yaw_a - wrist_yaw)) <= np.pi / 4 + 1e-6
    # The fingers still close across a face: the grasp yaw is a multiple of a quarter turn from the object's.
    assert abs(_wrap(4 * (yaw_a - obj_yaw))) < 1e-6


@pytest.mark.parametrize("obj_yaw", [0.1, 0.6, -0.45])
def test_elongated_object_grasp_closes_across_its_short_side(obj_yaw):
    """An object longer along y keeps only the half-turn symmetry: the fingers close along x (across the short
    side), and turning the object a quarter turn turns the grasp a quarter turn too."""
    long_y = (0.01, 0.03, 0.01)
    a, obj = _expert(long_y, obj_yaw, 0.0)
    b, _ = _expert(long_y, obj_yaw + np.pi / 2, 0.0)
    yaw_a, yaw_b = a._grasp_yaw(obj), b._grasp_yaw(obj)
    assert abs(_wrap(2 * (yaw_a - (obj_yaw + np.pi / 2)))) < 1e-6  # fingers along the TCP's y = the object's x
    assert abs(abs(_wrap(yaw_a - yaw_b)) - np.pi / 2) < 1e-6
    assert abs(_wrap(yaw_a)) <= np.pi / 2 + 1e-6
