import numpy as np
import pybullet as p
import pybullet_data
import pytest

from vidplan_server.robot.panda import JOINT_LOWER, JOINT_UPPER, Q_HOME, PandaKinematics, matrix_to_pose, pose_to_matrix

TCP_LINK = 11  # panda_grasptarget in pybullet_data's panda.urdf


@pytest.fixture(scope="module")
def kin():
    return PandaKinematics()


@pytest.fixture(scope="module")
def bullet_panda():
    client = p.connect(p.DIRECT)
    p.setAdditionalSearchPath(pybullet_data.getDataPath(), physicsClientId=client)
    robot = p.loadURDF("franka_panda/panda.urdf", useFixedBase=True, physicsClientId=client)
    yield client, robot
    p.disconnect(client)


def _random_q(rng, n):
    return rng.uniform(JOINT_LOWER + 0.1, JOINT_UPPER - 0.1, size=(n, 7))


def test_fk_agrees_with_pybullet_within_1mm(kin, bullet_panda):
    client, robot = bullet_panda
    for q in _random_q(np.random.default_rng(0), 50):
        for j in range(7):
            p.resetJointState(robot, j, q[j], physicsClientId=client)
        state = p.getLinkState(robot, TCP_LINK, computeForwardKinematics=True, physicsClientId=client)
        T = kin.fk(q)
        assert np.linalg.norm(T[:3, 3] - np.array(state[4])) < 1e-3
        R_bullet = np.array(p.getMatrixFromQuaternion(state[5])).reshape(3, 3)
        assert np.abs(T[:3, :3] - R_bullet).max() < 1e-3


def test_ik_reaches_target_and_pybullet_agrees(kin, bullet_panda):
    client, robot = bullet_panda
    rng = np.random.default_rng(1)
    for _ in range(20):
        q_true = Q_HOME + rng.normal(0, 0.25, 7)
        target = kin.fk_pose(q_true)
        sol = kin.ik(target, q0=Q_HOME)
        assert sol.success
        for j in range(7):
            p.resetJointState(robot, j, sol.q[j], physicsClientId=client)
        pos = p.getLinkState(robot, TCP_LINK, computeForwardKinematics=True, physicsClientId=client)[4]
        assert np.linalg.norm(np.array(pos) - target[:3]) < 1e-3
        assert np.all(sol.q >= JOINT_LOWER) and np.all(sol.q <= JOINT_UPPER)


def test_jacobian_matches_finite_differences(kin):
    q = Q_HOME + 0.1
    J = kin.jacobian(q)
    eps = 1e-6
    for i in range(7):
        dq = np.zeros(7)
        dq[i] = eps
        dp = (kin.fk(q + dq)[:3, 3] - kin.fk(q - dq)[:3, 3]) / (2 * eps)
        assert np.allclose(J[:3, i], dp, atol=1e-5)


def test_pose_matrix_round_trip_uses_extrinsic_xyz():
    pose = np.array([0.5, -0.1, 0.3, 3.0, 0.2, -1.0])
    T = pose_to_matrix(pose)
    # extrinsic XYZ: R = Rz(yaw) Ry(pitch) Rx(roll)
    r, pi_, y = pose[3:]
    Rx = np.array([[1, 0, 0], [0, np.cos(r), -np.sin(r)], [0, np.sin(r), np.cos(r)]])
    Ry = np.array([[np.cos(pi_), 0, np.sin(pi_)], [0, 1, 0], [-np.sin(pi_), 0, np.cos(pi_)]])
    Rz = np.array([[np.cos(y), -np.sin(y), 0], [np.sin(y), np.cos(y), 0], [0, 0, 1]])
    assert np.allclose(T[:3, :3], Rz @ Ry @ Rx)
    assert np.allclose(matrix_to_pose(T), pose)


def test_home_pose_points_the_gripper_down(kin):
    T = kin.fk(Q_HOME)
    assert T[2, 2] < -0.99  # TCP z axis points at the table
    assert 0.3 < T[0, 3] < 0.7 and T[2, 3] > 0.2
