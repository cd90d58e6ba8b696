"""The score-noise measurement: its figures on constructed scores, and one expert-driven probe on the tiny bundle."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vidplan_server.evaluation.score_noise import StateScores, expert_states, heading_to, score_draws, summarize

KINDS = ["policy:0", "policy:1", "policy:2"]


def _state(scores, dist=(0.10, 0.05, 0.20), approach=True) -> StateScores:
    return StateScores(np.asarray(scores, dtype=float), np.asarray(dist), KINDS, approach)


def test_noise_free_scores_that_follow_closeness():
    # Proposal 1 ends closest and scores best under every draw: no noise, perfect agreement and correlation.
    s = _state([[0.2, 0.3, 0.1], [0.2, 0.3, 0.1], [0.2, 0.3, 0.1]])
    r = summarize([s], margins=(0.0, 0.5))
    assert r["paired_noise"] == pytest.approx(0.0, abs=1e-12) and r["argmax_agreement"] == 1.0
    assert r["spearman_closeness"] == pytest.approx(1.0)
    assert r["spread"] == pytest.approx(np.std([0.2, 0.3, 0.1]))
    assert r["margins"]["0"] == {"switch_rate": 1.0, "switch_closer_m": pytest.approx(0.05), "approach_switches": 1}
    assert r["margins"]["0.5"]["switch_rate"] == 0.0  # the gap 0.1 is within the margin: the own sample is kept


def test_noise_that_reorders_the_proposals():
    # The winner changes with the draw; the paired difference s_1 - s_0 swings by 0.2 between the two draws.
    s = _state([[0.0, 0.1, -0.1], [0.0, -0.1, 0.1]], approach=False)
    r = summarize([s], margins=(0.0,))
    assert r["argmax_agreement"] == 0.0
    assert r["paired_noise"] == pytest.approx(np.std([0.1, -0.1], ddof=1))
    assert r["approach_states"] == 0 and np.isnan(r["spearman_closeness"])
    assert r["margins"]["0"]["approach_switches"] == 0 and np.isnan(r["margins"]["0"]["switch_closer_m"])


def test_heading_is_the_object_in_the_direction_of_the_move():
    objects = np.array([[0.5, 0.2, 0.0], [0.5, -0.2, 0.0], [0.2, 0.0, 0.0]])  # left, right, behind
    start = np.array([0.4, 0.0, 0.3])
    ends = np.array([[0.45, 0.05, 0.2], [0.45, -0.06, 0.3], [0.3, 0.0, 0.1]])
    assert heading_to(start, ends, objects).tolist() == [0, 1, 2]


def test_target_auc_counts_target_bound_proposals_that_outscore_the_others():
    heads = np.array([True, False, False])
    up = StateScores(np.array([[0.3, 0.1, 0.2], [0.3, 0.1, 0.2]]), np.zeros(3), KINDS, True, heads)
    split = StateScores(np.array([[0.15, 0.1, 0.2], [0.15, 0.1, 0.2]]), np.zeros(3), KINDS, True, heads)
    one_way = StateScores(np.array([[0.0, 0.1, 0.2], [0.0, 0.1, 0.2]]), np.zeros(3), KINDS, True, np.ones(3, bool))
    r = summarize([up, split, one_way], (0.0,))
    assert r["mixed_heading_states"] == 2 and r["target_auc"] == pytest.approx((1.0 + 0.5) / 2)
    assert np.isnan(summarize([one_way], (0.0,))["target_auc"])


def test_summarize_refuses_what_it_cannot_measure():
    with pytest.raises(ValueError, match="no states"):
        summarize([], (0.0,))
    with pytest.raises(ValueError, match="2 draws"):
        summarize([_state([[0.0, 0.1, 0.2]])], (0.0,))


def test_expert_states_and_their_scores_on_the_tiny_bundle(tiny_policy_bundle, sim_scene):
    from vidplan_server.evaluation.closed_loop.planning_agents import request_from_history
    from vidplan_server.planning.planner import Planner, PlannerConfig
    from vidplan_server.planning.types import PlanOptions
    from vidplan_server.sim.robot_env import SimEnvConfig, SimRobotEnv

    planner = Planner.load(tiny_policy_bundle, config=PlannerConfig(num_proposals=3, policy_samples=3))
    env = SimRobotEnv(SimEnvConfig(split="val"), scene=sim_scene)
    states = list(expert_states(env, "val", episodes=1, base_seed=3, every=10, max_steps=20))
    assert [s.step for s in states] == [0, 10] and len(states[1].history) == 16  # the first frame repeated
    assert [s.history[-1]["timestamp"]["step"] for s in states] == [0, 10]
    assert states[0].history[-1]["robot_state"]["gripper_position"] < 0.1
    st = states[1]
    req = request_from_history(
        st.history, st.instruction, planner.history_len, planner.frame_stride, PlanOptions(seed=5)
    )
    scored = score_draws(planner, req, st.target_xyz, draws=2, objects_xyz=st.objects_xyz)
    assert scored.scores.shape == (2, 3) and np.isfinite(scored.scores).all()
    assert np.allclose(st.objects_xyz[0], st.target_xyz) and scored.to_target.dtype == bool
    assert scored.kinds == KINDS and scored.end_distance_m.shape == (3,)
    assert not np.allclose(scored.scores[0], scored.scores[1])  # another draw, other rollouts
    again = score_draws(planner, req, st.target_xyz, draws=2)
    np.testing.assert_allclose(again.scores, scored.scores, atol=1e-6)  # seeded


def test_the_benchmark_refuses_bad_options():
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "score_noise.py"
    for args, message in ((["--draws", "1"], "--draws must be >= 2"), (["--margins", "-1"], "margins >= 0")):
        proc = subprocess.run(
            [sys.executable, str(script), "--out", "x.json", *args], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 2 and message in proc.stderr


def test_the_measurements_refuse_a_bundle_without_a_policy(tiny_heads_bundle, tiny_policy_bundle):
    from vidplan_server.evaluation.score_noise import planner_with_policy
    from vidplan_server.models.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="no policy module"):
        planner_with_policy(tiny_heads_bundle)
    assert planner_with_policy(tiny_policy_bundle).policy is not None
