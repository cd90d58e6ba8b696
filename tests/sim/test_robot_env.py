"""The simulated scene behind DROID's RobotEnv interface, driven by the robot client's loop."""

from __future__ import annotations

from concurrent.futures import Future

import grpc
import numpy as np
import pytest
from vidplan_client import droid  # the robot client (`pip install -e ./client`) drives the adapter here
from vidplan_client.robot_loop import LoopConfig, RobotLoop
from vidplan_client.wire import vidplan_pb2 as pb

from vidplan_server.data.schema import CAMERA_NAMES, DT_S
from vidplan_server.sim.robot_env import SimEnvConfig, SimRobotEnv


class LiftClient:
    """Plan client whose chunks raise the TCP 5 mm per step from the observed pose; unreachable once it has
    answered ``answers`` requests (0: always unreachable; None: never)."""

    def __init__(self, answers: int | None = None) -> None:
        self.answers = answers
        self.requests = 0

    def plan(self, request, timeout_s=None):
        self.requests += 1
        if self.answers is not None and self.requests > self.answers:
            error = grpc.RpcError("unreachable")
            error.code = lambda: grpc.StatusCode.UNAVAILABLE
            raise error
        start = np.array([*request.observation.state.cartesian_position, request.observation.state.gripper_position])
        response = pb.PlanResponse(
            session_id=request.session_id,
            sequence=request.sequence,
            stamp=pb.ChunkStamp(t0_s=request.observation.timestamp_s, i0=1, dt_s=DT_S),
        )
        for k in range(15):
            response.chunk.add(values=(start + [0, 0, 0.005 * (k + 1), 0, 0, 0, 0]).tolist())
        return response


class InlineExecutor:
    """Runs each plan call at once, in the loop's thread: the answer is there in the cycle that asked."""

    def submit(self, fn, *args, **kwargs):
        future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as e:  # noqa: BLE001 - handed to the loop as the call's failure
            future.set_exception(e)
        return future


@pytest.fixture
def env(sim_scene):
    env = SimRobotEnv(SimEnvConfig(resolution=(48, 64)), scene=sim_scene)
    env.reset(4)
    return env


def test_observation_is_droid_shaped_and_reset_is_seeded(env):
    obs = env.get_observation()
    frame = droid.read_observation(obs)  # the client's reader accepts it as a DROID observation
    assert tuple(frame.images) == CAMERA_NAMES
    assert all(img.shape == (48, 64, 3) and img.dtype == np.uint8 for img in frame.images.values())
    np.testing.assert_allclose(frame.cartesian_position, env.scene.kin.fk_pose(env.scene.joint_positions()), atol=1e-9)
    assert 0.0 <= frame.gripper_position <= 1.0 and obs["timestamp"] == {"step": 0, "sim_time_s": 0.0}
    first = env.instruction
    assert env.reset(4) == first
    np.testing.assert_array_equal(
        env.get_observation()["image"]["exterior_image_1_left"], obs["image"]["exterior_image_1_left"]
    )
    assert env.reset(5) != first or not np.array_equal(
        env.get_observation()["image"]["exterior_image_1_left"], obs["image"]["exterior_image_1_left"]
    )


def test_robot_loop_executes_chunks_in_the_sim(env):
    z0 = env.get_observation()["robot_state"]["cartesian_position"][2]
    client = LiftClient()
    # lead_steps=-1: ask for the next chunk only when the current one is used up (the answer is immediate here)
    loop = RobotLoop(
        env,
        client,
        LoopConfig(instruction=env.instruction, open_loop_steps=4, lead_steps=-1),
        clock=env.clock,
        sleep=env.sleep,
        executor=InlineExecutor(),
    )
    loop.run(8)
    z1 = env.get_observation()["robot_state"]["cartesian_position"][2]
    assert env.steps == 8 and client.requests == 2
    assert all(r.kind == "chunk" for r in loop.records)
    # Two chunks of 4 steps, each from the pose it observed: about 8 * 5 mm higher (the arm lags a little).
    assert 0.02 < z1 - z0 < 0.05
    assert env.ik_failures == 0


def test_robot_loop_holds_in_the_sim_when_the_server_is_down(env):
    start = env.get_observation()["robot_state"]["cartesian_position"]
    loop = RobotLoop(
        env,
        LiftClient(answers=0),
        LoopConfig(instruction=env.instruction),
        clock=env.clock,
        sleep=env.sleep,
        executor=InlineExecutor(),
    )
    loop.run(6)
    end = env.get_observation()["robot_state"]["cartesian_position"]
    assert all(r.kind == "hold" for r in loop.records) and env.steps == 6
    assert np.linalg.norm(end[:3] - start[:3]) < 0.005


def test_robot_loop_holds_at_its_last_target_in_the_sim_when_the_server_goes_down(env):
    # One chunk of 4 lifting steps, then the server is gone. The arm lags its targets (about 2 mm here): holding at
    # the last commanded target lets it arrive there; re-commanding the observed pose would freeze it short.
    config = LoopConfig(instruction=env.instruction, open_loop_steps=4, lead_steps=-1)
    loop = RobotLoop(env, LiftClient(answers=1), config, clock=env.clock, sleep=env.sleep, executor=InlineExecutor())
    loop.run(4)
    target = loop.records[-1].action.copy()
    lag = target[2] - env.get_observation()["robot_state"]["cartesian_position"][2]
    loop.run(6)
    assert [r.kind for r in loop.records] == ["chunk"] * 4 + ["hold"] * 6
    for record in loop.records[4:]:
        np.testing.assert_array_equal(record.action, target)  # pose and gripper as last commanded
    end = env.get_observation()["robot_state"]["cartesian_position"]
    assert lag > 0.001 and abs(end[2] - target[2]) < 0.0005
    assert np.linalg.norm(end[:3] - target[:3]) < 0.001


def test_bad_calls_are_refused(sim_scene):
    env = SimRobotEnv(scene=sim_scene)
    with pytest.raises(RuntimeError, match="reset"):
        env.get_observation()
    env.reset(1)
    with pytest.raises(ValueError, match="action_space"):
        env.update_robot(np.zeros(7), action_space="joint_velocity")
    with pytest.raises(ValueError, match="7 finite"):
        env.update_robot(np.zeros(6))
    assert env.is_success() is False and env.steps == 0
