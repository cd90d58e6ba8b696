"""The global proposer: basis proposals move along their axes, nominal perturbations have the configured
statistics, and everything it returns is within the safety limits."""

from __future__ import annotations

import numpy as np
import pytest

from vidplan_server.planning.adapter import ActionAdapter
from vidplan_server.planning.limits import SafetyLimits, check_chunk
from vidplan_server.planning.proposer import DIRECTIONS, Proposer, ProposerConfig
from vidplan_server.planning.types import PlanningError
from vidplan_server.robot.panda import Q_HOME, PandaKinematics

STEPS = 15


@pytest.fixture(scope="module")
def proposer():
    return Proposer(ActionAdapter(PandaKinematics(), SafetyLimits()))


@pytest.fixture(scope="module")
def home(proposer):
    return proposer.kin.fk_pose(Q_HOME)


def assert_feasible(proposer, props, pose0):
    for a, q, kind in zip(props.actions, props.joints, props.kinds, strict=True):
        assert check_chunk(a, pose0, proposer.adapter.limits, q, proposer.kin) == [], kind


def test_basis_proposals_move_along_their_axis(proposer, home):
    props = proposer.propose(Q_HOME, home, 0.0, STEPS, 6, np.random.default_rng(0))
    assert [k.split(":")[1] for k in props.kinds] == list(DIRECTIONS)
    duration = STEPS / 15.0
    for a, q, name in zip(props.actions, props.joints, DIRECTIONS, strict=True):
        # forward kinematics of the joints is the action (the actions are what the joints reach)
        np.testing.assert_allclose(proposer.kin.fk_pose(q[-1])[:3], a[-1, :3], atol=1e-9)
        moved = a[-1, :3] - home[:3]
        axis = np.asarray(DIRECTIONS[name], dtype=float)
        assert moved @ axis / np.linalg.norm(moved) > 0.97, (name, moved)
        assert abs(moved @ axis - proposer.config.speed_m_s * duration) < 0.03, (name, moved)
        # orientation kept within a few degrees over the chunk
        assert np.abs(np.angle(np.exp(1j * (a[:, 3:6] - home[3:6])))).max() < 0.05
    assert_feasible(proposer, props, home)


def test_gripper_variants_toggle(proposer, home):
    open_props = proposer.propose(Q_HOME, home, 0.0, STEPS, 12, np.random.default_rng(0))
    closed_props = proposer.propose(Q_HOME, home, 1.0, STEPS, 12, np.random.default_rng(0))
    assert np.all(open_props.actions[:6, :, 6] == 0.0) and np.all(open_props.actions[6:, :, 6] == 1.0)
    assert np.all(closed_props.actions[:6, :, 6] == 1.0) and np.all(closed_props.actions[6:, :, 6] == 0.0)
    assert open_props.kinds[6].endswith("/close") and closed_props.kinds[6].endswith("/open")
    # the same arm motion underneath
    np.testing.assert_allclose(open_props.actions[6:, :, :6], open_props.actions[:6, :, :6])


def test_basis_stops_at_the_workspace_wall(proposer):
    target = np.r_[0.5, 0.385, 0.3, np.pi, 0.0, 0.0]  # 1.5 cm from the y = 0.4 m wall
    q0 = proposer.kin.ik(target, Q_HOME).q
    pose0 = proposer.kin.fk_pose(q0)
    props = proposer.propose(q0, pose0, 0.0, STEPS, 6, np.random.default_rng(0))
    plus_y = props.actions[props.kinds.index("basis:+y")]
    assert plus_y[:, 1].max() <= 0.4 - proposer.adapter.config.workspace_margin_m + 1e-9
    assert_feasible(proposer, props, pose0)


def test_nominal_perturbation_statistics(proposer, home):
    nominal = np.tile(np.r_[home, 0.3], (STEPS, 1))
    nominal[:, 0] += np.linspace(0.005, 0.075, STEPS)
    K = 2000
    out = proposer.perturb(nominal, K, np.random.default_rng(1))
    c = proposer.config
    end = out[:, -1] - nominal[-1]
    sd = np.array([c.perturb_std_m] * 3 + [c.perturb_std_gripper])
    dims = [0, 1, 2, 6]
    np.testing.assert_array_less(np.abs(end[:, dims].mean(0)), 4 * sd / np.sqrt(K))
    np.testing.assert_allclose(end[:, dims].std(0), sd, rtol=0.06)
    # a ramp: the first step moves 1/S of the end offset, so the chunk starts near the current pose
    first = out[:, 0] - nominal[0]
    np.testing.assert_allclose(first[:, :3], end[:, :3] / STEPS, atol=1e-12)
    # orientation offsets as rotation vectors with the configured spread
    from scipy.spatial.transform import Rotation

    rel = Rotation.from_euler("xyz", out[:, -1, 3:6]) * Rotation.from_euler("xyz", nominal[-1, 3:6]).inv()
    np.testing.assert_allclose(rel.as_rotvec().std(0), c.perturb_std_rad, rtol=0.06)


def test_nominal_proposals_come_first_and_are_feasible(proposer, home):
    nominal = np.tile(np.r_[home, 0.0], (STEPS, 1))
    nominal[:, 0] += np.linspace(0.01, 0.15, STEPS)
    props = proposer.propose(Q_HOME, home, 0.0, STEPS, 12, np.random.default_rng(0), nominal)
    assert props.kinds[:6] == ["nominal"] + [f"nominal~{k}" for k in range(1, 6)]
    assert props.kinds[6:] == [f"basis:{d}" for d in DIRECTIONS]
    np.testing.assert_allclose(props.actions[0, :, :3], nominal[:, :3], atol=2e-3)
    assert_feasible(proposer, props, home)


def test_an_infeasible_nominal_is_made_feasible(proposer, home):
    nominal = np.tile(np.r_[home, 0.0], (STEPS, 1))
    nominal[:, 0] += 0.6  # jumps 0.6 m at once, ends outside the workspace box
    nominal[:, 6] = 1.7
    props = proposer.propose(Q_HOME, home, 0.0, STEPS, 1, np.random.default_rng(0), nominal)
    assert props.kinds == ["nominal"]
    assert_feasible(proposer, props, home)
    assert props.actions[0, -1, 0] > home[0] + 0.25  # it still goes where the policy wanted, as far as it can


def test_joint_velocity_nominal_goes_through_the_adapter(proposer, home):
    qdot = np.zeros((STEPS, 8))
    qdot[:, 0] = 0.2  # DROID normalised units: 0.04 rad per step on the base joint
    props = proposer.propose(Q_HOME, home, 0.0, STEPS, 1, np.random.default_rng(0), qdot, "joint_velocity")
    integrated = Q_HOME + np.r_[STEPS * 0.04, np.zeros(6)]
    np.testing.assert_allclose(props.actions[0, -1, :3], proposer.kin.fk_pose(integrated)[:3], atol=2e-3)
    assert props.actions[0, -1, 1] > home[1] + 0.2  # rotating the base joint positively swings the TCP to +y
    assert_feasible(proposer, props, home)


@pytest.mark.parametrize(
    "nominal, space, field",
    [
        (np.zeros((15, 6)), "cartesian_position", "nominal"),
        (np.zeros((15, 7)), "joint_velocity", "nominal"),
        (np.full((15, 7), np.nan), "cartesian_position", "nominal"),
        (np.zeros((15, 7)), "joint_position", "nominal_space"),
    ],
)
def test_bad_nominal_chunks_are_refused(proposer, home, nominal, space, field):
    with pytest.raises(PlanningError, match=field):
        proposer.propose(Q_HOME, home, 0.0, STEPS, 4, np.random.default_rng(0), nominal, space)


def test_too_many_basis_proposals_is_an_error(proposer, home):
    with pytest.raises(PlanningError, match="num_proposals"):
        proposer.propose(Q_HOME, home, 0.0, STEPS, 37, np.random.default_rng(0))


def test_config_rejects_a_speed_beyond_the_step_limit():
    with pytest.raises(ValueError, match="speed_m_s"):
        Proposer(ActionAdapter(PandaKinematics(), SafetyLimits()), ProposerConfig(speed_m_s=1.0))


def test_no_feasible_proposal_is_an_unsafe_plan(proposer, home):
    """Nothing the proposer can build passes the limits (here: a per-step limit below what IK resolves):
    that is 'no safe plan' (FAILED_PRECONDITION on the wire), not a bad request."""
    from dataclasses import replace

    from vidplan_server.planning.types import UnsafePlanError

    tight = Proposer(ActionAdapter(proposer.kin, replace(SafetyLimits(), max_rotation_per_step_rad=1e-12)))
    with pytest.raises(UnsafePlanError, match="no feasible proposal"):
        tight.propose(Q_HOME, home, 0.0, STEPS, 6, np.random.default_rng(0))


class _OvershootingKinematics(PandaKinematics):
    """IK that lands 4 mm past its goal along +x: within the 5 mm IK tolerance, as a real solver may."""

    def ik(self, target, q0, tol=1e-6):
        goal = np.array(target, dtype=np.float64)
        goal[0] += 0.004
        return super().ik(goal, q0, tol)


def test_steps_stay_within_the_limits_when_ik_lands_off_its_goal(home):
    proposer = Proposer(ActionAdapter(_OvershootingKinematics(), SafetyLimits()))
    nominal = np.tile(np.r_[home, 0.0], (STEPS, 1))
    nominal[:, 0] += np.linspace(0.1, 0.5, STEPS)  # every step asks for more than the per-step limit
    props = proposer.propose(Q_HOME, home, 0.0, STEPS, 1, np.random.default_rng(0), nominal)
    assert props.kinds == ["nominal"]  # not dropped as infeasible
    assert_feasible(proposer, props, home)
    assert props.actions[0, -1, 0] > home[0] + 0.3  # still moving at close to the limit


def test_a_robot_just_past_a_joint_limit_still_gets_a_feasible_chunk(proposer):
    q0 = Q_HOME.copy()
    q0[6] = proposer.adapter.limits.joint_upper_rad[6] + 0.002  # reported a hair past the wrist's limit
    pose0 = proposer.kin.fk_pose(q0)
    nominal = np.tile(np.r_[pose0, 0.0], (STEPS, 1))
    nominal[:, 2] += 5.0  # unreachable: every step holds
    props = proposer.propose(q0, pose0, 0.0, STEPS, 1, np.random.default_rng(0), nominal)
    assert props.kinds == ["nominal"]
    assert_feasible(proposer, props, pose0)


def test_pulled_policy_samples_bend_toward_the_goal_in_the_table_plane_only_while_far(proposer, home):
    samples = np.tile(np.r_[home, 0.0], (3, STEPS, 1))
    samples[:, :, 1] += np.linspace(0.0, 0.03, STEPS)  # each sample drifts 3 cm along +y
    c = proposer.config
    far = home[:3] + np.array([0.3, 0.0, -0.2])  # 30 cm ahead in x, on the table
    props = proposer.propose(Q_HOME, home, 0.0, STEPS, 5, np.random.default_rng(0), policy=samples, goal=far, pulls=4)
    # room for two pulls (count 5 - 3 samples), of samples 0 and 1
    assert props.kinds == ["policy:0", "policy:1", "policy:2", "policy:0>goal", "policy:1>goal"]
    end_own, end_pulled = props.actions[0, -1], props.actions[3, -1]
    offset = end_pulled[:2] - end_own[:2]
    assert np.linalg.norm(offset) == pytest.approx(c.pull_max_m, abs=3e-3)  # capped at pull_max_m
    toward = (far[:2] - end_own[:2]) / np.linalg.norm(far[:2] - end_own[:2])
    assert offset @ toward == pytest.approx(np.linalg.norm(offset), abs=3e-3)  # straight toward the goal
    assert end_pulled[2] == pytest.approx(end_own[2], abs=3e-3) and end_pulled[6] == end_own[6]  # height, gripper kept
    # a ramp: the first step moves 1/S of the offset
    assert np.linalg.norm(props.actions[3, 0, :2] - props.actions[0, 0, :2]) < 0.2 * c.pull_max_m
    assert_feasible(proposer, props, home)
    # close to the goal in the table plane: the policy's samples compete alone (then the basis fills the room)
    near = home[:3] + np.array([0.05, 0.02, -0.2])
    props = proposer.propose(Q_HOME, home, 0.0, STEPS, 5, np.random.default_rng(0), policy=samples, goal=near, pulls=4)
    assert not any(k.endswith(">goal") for k in props.kinds)
    # a short way from the goal: the pulled sample ends on it, no farther
    goal = np.r_[samples[0, -1, :2] + [0.04, 0.0], home[2]]
    pulled = proposer.pull(samples[0], goal)
    np.testing.assert_allclose(pulled[-1, :2], goal[:2], atol=1e-9)
    np.testing.assert_allclose(pulled[:, 2:], samples[0][:, 2:])
