"""Instruction following and failure causes read from constructed simulator states."""

import numpy as np
import pytest

from vidplan_server.evaluation.closed_loop.outcome import GraspMonitor, failure_cause
from vidplan_server.robot.panda import Q_HOME, matrix_to_pose
from vidplan_server.sim.assets import CONTAINERS, TRAIN_COLOURS, TRAIN_OBJECTS
from vidplan_server.sim.bullet import p
from vidplan_server.sim.cameras import CameraRig
from vidplan_server.sim.expert import top_down
from vidplan_server.sim.scene import ARM_JOINTS, ObjectSpec, SceneSpec

CUBE = TRAIN_OBJECTS[0]


@pytest.fixture
def two_cubes(sim_scene):
    """A red cube (the target, objects[0]) and a blue one 20 cm apart; the arm at home, the gripper open."""
    spec = SceneSpec(
        objects=[
            ObjectSpec(CUBE, "red", TRAIN_COLOURS["red"], (0.5, -0.1), 0.0),
            ObjectSpec(CUBE, "blue", TRAIN_COLOURS["blue"], (0.5, 0.1), 0.0),
        ],
        container=CONTAINERS[0],
        container_colour="grey",
        container_xy=(0.55, 0.3),
        container_yaw=0.0,
        rig=CameraRig.sample(np.random.default_rng(0), jitter=0.0),
        q_start=Q_HOME.copy(),
    )
    sim_scene.reset(spec)
    return sim_scene


def hold(scene, index: int, lift_m: float) -> None:
    """Put the TCP (top-down) around object ``index`` raised by ``lift_m`` and close the fingers on it."""
    obj = scene.objects[index]
    pos, orn = scene.object_pose(obj)
    T = np.eye(4)
    T[:3, :3] = top_down(0.0)
    T[:3, 3] = [pos[0], pos[1], pos[2] + lift_m]
    pose = matrix_to_pose(T)
    ik = scene.kin.ik(pose, q0=scene.q_cmd)
    assert ik.success
    for j, q in zip(ARM_JOINTS, ik.q, strict=True):
        p.resetJointState(scene.robot, j, q, physicsClientId=scene.client)
    scene.q_cmd = ik.q
    p.resetBasePositionAndOrientation(obj.body, T[:3, 3].tolist(), orn.tolist(), physicsClientId=scene.client)
    for _ in range(4):  # the fingers close on it and physics holds it there
        scene.apply_action(np.r_[pose, 1.0])


def test_the_instructed_object_held_and_lifted_is_target(two_cubes):
    monitor = GraspMonitor(two_cubes)
    monitor.update(0)
    assert monitor.first == "none"
    hold(two_cubes, 0, 0.05)
    monitor.update(7)
    assert (monitor.first, monitor.first_object, monitor.first_step) == ("target", "red cube", 7)
    assert failure_cause(False, monitor.first, target_held=True) == "timeout"
    assert failure_cause(False, monitor.first, target_held=False) == "dropped"
    assert failure_cause(True, monitor.first, target_held=False) is None


def test_a_distractor_grasped_first_is_other_and_stays_first(two_cubes):
    monitor = GraspMonitor(two_cubes)
    hold(two_cubes, 1, 0.05)
    monitor.update(3)
    assert (monitor.first, monitor.first_object) == ("other", "blue cube")
    assert failure_cause(False, monitor.first, target_held=False) == "wrong_object"
    hold(two_cubes, 0, 0.05)  # the target later does not change which object came first
    monitor.update(9)
    assert (monitor.first, monitor.first_step) == ("other", 3)


def test_held_on_the_table_without_lift_is_no_grasp(two_cubes):
    monitor = GraspMonitor(two_cubes)
    hold(two_cubes, 0, 0.0)
    assert two_cubes.in_gripper(two_cubes.objects[0])  # the fingers touch it ...
    monitor.update(5)
    assert monitor.first == "none"  # ... but it is not lifted
    assert failure_cause(False, monitor.first, target_held=True) == "no_grasp"


def test_an_error_is_the_cause_whatever_the_state():
    assert failure_cause(False, "target", True, error="agent_error: ValueError: bad") == "agent_error: ValueError: bad"
    with pytest.raises(ValueError, match="first_grasp"):
        failure_cause(False, "maybe", False)


def test_the_approach_monitor_keeps_the_closest_distance_and_the_closes_near_the_object():
    from vidplan_server.evaluation.closed_loop.outcome import ApproachMonitor

    m = ApproachMonitor()
    assert m.record() == {"closest_target_m": None, "closes": 0, "closest_close_m": None}
    target = (0.5, 0.0, 0.02)
    m.update((0.5, 0.3, 0.02), target, 0.0)  # 30 cm away, open
    m.update((0.5, 0.2, 0.02), target, 0.9)  # closes 20 cm away
    m.update((0.5, 0.1, 0.02), target, 1.0)  # still closed: not a new close
    m.update((0.5, 0.04, 0.02), target, 0.1)  # opens 4 cm away
    m.update((0.5, 0.05, 0.02), target, 0.6)  # closes again, 5 cm away
    assert m.record() == {"closest_target_m": 0.04, "closes": 2, "closest_close_m": 0.05}


def test_no_grasp_failures_are_told_apart_by_how_close_the_hand_came():
    from vidplan_server.evaluation.closed_loop.outcome import no_grasp_kind

    def rec(closest, close, cause="no_grasp"):
        return {
            "failure_cause": cause,
            "closest_target_m": closest,
            "closes": int(close is not None),
            "closest_close_m": close,
        }

    assert no_grasp_kind(rec(0.20, 0.03)) == "far"  # never within 5 cm (the close was elsewhere)
    assert no_grasp_kind(rec(0.03, None)) == "no_close"
    assert no_grasp_kind(rec(0.03, 0.12)) == "no_close"  # closed, but only far from it
    assert no_grasp_kind(rec(0.02, 0.04)) == "missed"
    assert no_grasp_kind(rec(0.02, 0.04, cause="dropped")) is None
    assert no_grasp_kind({"failure_cause": "no_grasp"}) is None  # a record from before these fields
