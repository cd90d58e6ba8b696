"""The planning-signal diagnostic: its metrics, step selection, distractor instructions, the simulator oracle and
the command on a tiny bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vidplan_server.cli import main
from vidplan_server.data.schema import CAMERA_NAMES
from vidplan_server.evaluation.planning_signal import (
    VARIANTS,
    approach_steps,
    distractor_instruction,
    rank_metrics,
    summarize,
)
from vidplan_server.evaluation.sim_oracle import SimOracle


def test_rank_metrics_on_known_orderings():
    d = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert rank_metrics(-d, d) == (pytest.approx(1.0), True)  # nearer scores higher: perfect
    assert rank_metrics(d, d) == (pytest.approx(-1.0), False)  # the farthest wins
    assert rank_metrics(np.ones(6), d) == (0.0, True)  # constant: no signal; argmax 0 is the nearest
    rho, win = rank_metrics(np.array([0, 0, 0, 0, 1.0, 0]), d)  # a far one wins
    assert not win and rho < 0


def test_summarize_averages_per_instruction_and_variant():
    from vidplan_server.evaluation.planning_signal import StepSignal

    d = [0.1, 0.2, 0.3]
    steps = [
        StepSignal(0, 5, {"target": "a"}, {"target": d}, {"target": {"model": [3.0, 2.0, 1.0]}}),
        StepSignal(0, 9, {"target": "a"}, {"target": d}, {"target": {"model": [1.0, 2.0, 3.0]}}),
    ]
    s = summarize(steps, ("model",))
    assert s["target"]["model"]["spearman"] == pytest.approx(0.0)
    assert s["target"]["model"]["winner_best_third"] == pytest.approx(0.5)
    assert s["target"]["model"]["steps"] == 2 and s["distractor"] == {}


def test_distractor_instruction_swaps_the_named_object():
    names = ["red cube", "blue duck", "green lego"]
    assert distractor_instruction("put the red cube in the tray", names, 0, 1) == "put the blue duck in the tray"
    assert distractor_instruction("pick up the red cube", names, 0, 2) == "pick up the green lego"
    assert distractor_instruction("pick up the thing", names, 0, 1) is None
    assert distractor_instruction("pick up the dark red cube", ["red cub"], 0, 0) is None  # whole words only


def test_approach_steps_are_open_far_and_before_the_first_grasp(short_episodes):
    ep = short_episodes[0]
    steps = approach_steps(ep, 3, 0.08, first=3)
    gt = ep.ground_truth
    grip = ep.gripper_position.reshape(-1)
    assert 1 <= len(steps) <= 3 and all(s >= 3 for s in steps)
    for s in steps:
        assert grip[s] < 0.5
        assert np.linalg.norm(ep.cartesian_position[s, :3] - gt.object_poses[s, 0, :3]) > 0.08
    assert approach_steps(ep, 3, 10.0, first=3) == []  # nothing is 10 m away


def test_the_oracle_rebuilds_a_recorded_step(short_episodes):
    ep = short_episodes[1]
    oracle = SimOracle()
    try:
        step = 12
        oracle.load(ep, step)
        scene = oracle.env.scene
        assert np.allclose(scene.joint_positions(), ep.joint_position[step], atol=1e-5)
        assert np.allclose(scene.object_poses()[:, :3], ep.ground_truth.object_poses[step][:, :3], atol=1e-5)
        # Executing the recorded actions renders (nearly) the recorded frames 3 steps later.
        out = oracle.rollout(ep.action[None, step : step + 6].astype(np.float64), frame_stride=3)
        assert out.frames.shape == (1, 2, 3, 64, 64, 3) and out.segmentation.shape == (1, 2, 3, 64, 64)
        for k, t in enumerate((step + 3, step + 6)):
            recorded = np.stack([ep.images[c][t] for c in CAMERA_NAMES]).astype(float)
            assert np.abs(out.frames[0, k].astype(float) - recorded).mean() < 4.0
        # Every proposal starts from the same state: the same chunk twice gives the same frames.
        twice = oracle.rollout(np.repeat(ep.action[None, step : step + 3].astype(np.float64), 2, 0), 3)
        assert np.array_equal(twice.frames[0], twice.frames[1])
    finally:
        oracle.close()


def test_the_command_on_a_tiny_bundle(tiny_heads_bundle, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "signal"
    code = main(
        [
            "eval",
            "planning-signal",
            "--data",
            str(tiny_dataset),
            "--out",
            str(out),
            "--ckpt",
            str(tiny_heads_bundle),
            "--episodes",
            "1",
            "--steps-per-episode",
            "1",
            "--proposals",
            "4",
            "--quiet",
        ]
    )
    assert code == 0
    result = json.loads((out / "planning_signal.json").read_text())
    assert set(result["summary"]["target"]) == set(VARIANTS) - {"progress"}  # "all": this bundle has no progress head
    step = result["steps"][0]
    assert len(step["distance_m"]["target"]) == 4
    assert all(len(v) == 4 for v in step["scores"]["target"].values())
    if "distractor" in step["instruction"]:
        assert step["instruction"]["distractor"] != step["instruction"]["target"]
    assert "| model |" in (out / "planning_signal.md").read_text()
    assert "Spearman" in capsys.readouterr().out


def test_unknown_variant_is_a_clear_error(tiny_dataset, tmp_path, capsys):
    code = main(
        ["eval", "planning-signal", "--data", str(tiny_dataset), "--out", str(tmp_path), "--variants", "model,dreams"]
    )
    assert code == 2 and "dreams" in capsys.readouterr().err
