"""The learned agents of the closed-loop benchmark on the tiny bundle: one short episode each, requests built
from the observation history, the variants configured as their names say."""

from __future__ import annotations

import numpy as np
import pytest

from vidplan_server.evaluation.closed_loop.agents import AgentUnavailable, build_agent
from vidplan_server.evaluation.closed_loop.planning_agents import PLANNING_AGENTS, request_from_history
from vidplan_server.evaluation.closed_loop.runner import ClosedLoopConfig, Job, run_episode
from vidplan_server.planning.types import PlanOptions
from vidplan_server.sim.robot_env import SimEnvConfig, SimRobotEnv

FAST = {"num_proposals": 4, "refine_iters": 1, "policy_samples": 2}


@pytest.mark.parametrize("name", PLANNING_AGENTS)
def test_one_short_episode_per_agent(name, tiny_policy_bundle, sim_scene, request):
    env = SimRobotEnv(SimEnvConfig(split="val"), scene=sim_scene)
    bundle = request.getfixturevalue("tiny_goal_bundle") if name == "goal-policy" else tiny_policy_bundle
    agent = build_agent(name, bundle, "cpu", **FAST)
    rec = run_episode(env, agent, Job("val", name, 0), ClosedLoopConfig(max_steps=10, open_loop_horizon=5))
    assert rec["steps"] == 10 and rec["plans"] == 2 and rec["failure_cause"] != "agent_error"
    kinds = set(rec["plan_kinds"])
    if name == "policy":  # the first plan has no reference (one draw); the second keeps its coherent draw
        assert "policy:0" in kinds and all(k.startswith("policy:") for k in kinds)
    elif name == "vidplan-basis":
        assert all(k.startswith("basis:") for k in kinds)
    elif name == "goal-policy":
        assert kinds <= {"goal:0", "policy:0"} and "goal:0" in kinds
        assert agent.planner.config.num_proposals == 1
    else:
        assert all(k.startswith(("policy:", "basis:")) for k in kinds)


def test_variants_configure_the_planner(tiny_policy_bundle):
    no_uq = build_agent("vidplan-no-uq", tiny_policy_bundle, "cpu", **FAST)
    assert no_uq.planner.config.score.weighting == "none"
    assert build_agent("vidplan", tiny_policy_bundle, "cpu", **FAST).planner.config.score.weighting == "exp"
    assert build_agent("vidplan-basis", tiny_policy_bundle, "cpu", **FAST).options.policy_samples == 0
    assert build_agent("policy", tiny_policy_bundle, "cpu").options.mode == "policy"


def test_policy_agent_needs_a_policy(tiny_heads_bundle, tiny_policy_bundle):
    with pytest.raises(AgentUnavailable, match="no policy module"):
        build_agent("policy", tiny_heads_bundle, "cpu")
    with pytest.raises(AgentUnavailable, match="no goal_policy module"):
        build_agent("goal-policy", tiny_policy_bundle, "cpu")


def test_request_history_frames_are_frame_stride_apart():
    def obs(step):
        img = np.full((8, 8, 3), step, np.uint8)
        return {
            "image": {c: img for c in ("exterior_image_1_left", "exterior_image_2_left", "wrist_image_left")},
            "robot_state": {
                "joint_positions": np.zeros(7),
                "cartesian_position": np.ones(6) * step,
                "gripper_position": 0.0,
            },
            "timestamp": {"step": step},
        }

    history = [obs(s) for s in range(10)]
    req = request_from_history(history, "pick up the cube", 2, 3, PlanOptions(seed=4))
    assert req.history.shape == (2, 3, 8, 8, 3)
    assert req.history[0, 0, 0, 0, 0] == 6 and req.history[1, 0, 0, 0, 0] == 9
    assert np.allclose(req.state.cartesian_position, 9) and req.options.seed == 4
    short = request_from_history(history[:2], "x", 2, 3, PlanOptions())
    assert short.history[0, 0, 0, 0, 0] == 0  # the earliest observation repeated at the start


def test_the_reference_is_the_unexecuted_rest_of_the_last_chunk(tiny_policy_bundle):
    agent = build_agent("policy", tiny_policy_bundle, "cpu")
    assert agent.reference(8) is None  # nothing planned yet
    chunk = np.arange(15 * 7, dtype=np.float64).reshape(15, 7)
    agent._last = (10, chunk)
    assert np.array_equal(agent.reference(18), chunk[8:])
    assert agent.reference(10) is None and agent.reference(25) is None  # not yet executed / ran out
    agent.reset(None, 3)
    assert agent.reference(18) is None
