"""The goal-conditioned policy: its goal input, the warm start from a policy, its training data and stage."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from vidplan_server.cli import main
from vidplan_server.models.policy import FlowPolicy, PolicyConfig, load_policy, with_goal_input
from vidplan_server.models.semantic import SemanticConfig, Tokenizer
from vidplan_server.training.dagger import dagger_goals, scene_target_xy
from vidplan_server.training.policy_stage import (
    GoalAugment,
    PolicyData,
    PolicyStage,
    mask_target_words,
    policy_data,
)

TINY = PolicyConfig(
    vocab=("cube", "pick", "put", "red", "the", "tray", "in", "up"),
    channels=(8, 8, 16, 16),
    text_dim=16,
    feature_dim=32,
    hidden=64,
    flow_steps=4,
)


def inputs(B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand((B, 3, 3, 64, 64), generator=g)
    state = torch.tensor([[0.5, 0.0, 0.3, math.pi - 0.01, 0.0, 0.2, 0.0]]).repeat(B, 1)
    return images, state


def test_the_goal_steers_samples_and_a_missing_goal_is_no_goal():
    torch.manual_seed(0)
    policy = FlowPolicy(replace(TINY, goal_input=True)).eval()
    images, state = inputs(2)
    noise = torch.randn(2, 3, 15, 7)
    text = ["pick up the red cube"] * 2
    with torch.no_grad():
        left = policy.sample(images, state, text, noise, torch.tensor([[0.5, 0.2]] * 2))
        right = policy.sample(images, state, text, noise, torch.tensor([[0.5, -0.2]] * 2))
        absent = policy.sample(images, state, text, noise, torch.full((2, 2), float("nan")))
        none = policy.sample(images, state, text, noise, None)
    assert not torch.allclose(left, right)
    assert torch.equal(absent, none) and torch.isfinite(absent).all()
    # A policy without a goal input ignores one.
    plain = FlowPolicy(TINY).eval()
    with torch.no_grad():
        assert torch.equal(
            plain.sample(images, state, text, noise, torch.tensor([[0.5, 0.2]] * 2)),
            plain.sample(images, state, text, noise),
        )


def test_the_warm_start_computes_what_the_policy_computes_whatever_the_goal():
    torch.manual_seed(1)
    policy = FlowPolicy(TINY).eval()
    warm = with_goal_input(policy).eval()
    assert warm.config == replace(TINY, goal_input=True)
    images, state = inputs(2, seed=3)
    noise = torch.randn(2, 2, 15, 7)
    text = ["pick up the red cube", "put the red cube in the tray"]
    with torch.no_grad():
        expected = policy.sample(images, state, text, noise)
        assert torch.equal(warm.sample(images, state, text, noise, torch.tensor([[0.6, 0.1], [0.4, -0.2]])), expected)
    with pytest.raises(ValueError, match="already has a goal input"):
        with_goal_input(warm)


def test_masked_target_words_are_unknown_words_and_the_rest_is_kept():
    rng = np.random.default_rng(0)
    tok = Tokenizer(SemanticConfig(vocab=TINY.vocab, oov_buckets=16, max_words=12))
    masked = mask_target_words("put the red cube in the tray", rng)
    words = masked.split()
    assert words[:2] == ["put", "the"] and words[4:] == ["in", "the", "tray"]
    assert words[2] != "red" and words[3] != "cube" and len(words[2]) == 8
    ids = tok([masked])[0].tolist()
    known = tok(["put the red cube in the tray"])[0].tolist()
    assert ids[:2] == known[:2] and ids[4:7] == known[4:7] and ids[2] != known[2]
    assert ids[2] > len(TINY.vocab) and ids[3] > len(TINY.vocab)  # hashed buckets, after the vocabulary
    picked = mask_target_words("pick up the red cube", rng).split()
    assert picked[:3] == ["pick", "up", "the"] and "red" not in picked and len(picked) == 5
    assert mask_target_words("wave hello", rng) == "wave hello"


def test_the_goal_stage_jitters_drops_and_masks():
    n = 64
    data = PolicyData(
        frames=np.zeros((n, 3, 64, 64, 3), np.uint8),
        state=np.tile(np.array([0.5, 0.0, 0.2, math.pi, 0.0, 0.0, 0.0], np.float32), (n, 1)),
        chunk=np.zeros((n, 15, 7), np.float32),
        text=np.zeros(n, int),
        instructions=["pick up the red cube"],
        goal=np.tile(np.array([0.6, 0.1], np.float32), (n, 1)),
    )
    stage = PolicyStage(replace(TINY, goal_input=True), data, data, augment=GoalAugment(0.03, 0.5, 0.25))
    assert stage.name == "goal_policy"
    g = torch.Generator().manual_seed(0)
    _, _, texts, _, goal = stage.batch(g, n, torch.device("cpu"))
    present = torch.isfinite(goal[:, 0])
    assert 0.5 < present.float().mean() < 0.95  # about a quarter dropped
    err = (goal[present] - torch.tensor([0.6, 0.1])).abs()
    assert 0 < err.mean() < 0.05 and err.max() < 0.2  # jittered by a few cm
    assert 0.2 < np.mean([t != "pick up the red cube" for t in texts]) < 0.8
    plain = PolicyStage(TINY, data, data)
    assert plain.name == "policy" and plain.batch(g, 4, torch.device("cpu"))[4] is None


def test_recorded_goals_are_the_targets_ground_truth(demo_dataset, short_episodes):
    data = policy_data(demo_dataset, [0], (64, 64), 15, progress=False, goals=True)
    ep = short_episodes[0]
    gt = ep.ground_truth
    assert np.allclose(data.goal, gt.object_poses[:, gt.target_index, :2], atol=1e-6)
    assert policy_data(demo_dataset, [0], (64, 64), 15, progress=False).goal is None
    both = PolicyData.concat([data, policy_data(demo_dataset, [1], (64, 64), 15, progress=False)])
    assert both.goal.shape == (len(both), 2) and np.isnan(both.goal[len(data) :]).all()


def test_dagger_goals_rebuild_the_scene_and_stop_when_the_gripper_closes(sim_scene):
    from vidplan_server.sim.robot_env import SimEnvConfig, SimRobotEnv

    env = SimRobotEnv(SimEnvConfig(split="train"), scene=sim_scene)
    seed = 123457
    instruction = env.reset(seed)
    start = sim_scene.object_pose(sim_scene.objects[0])[0][:2]
    assert np.allclose(scene_target_xy(seed, instruction), start, atol=1e-4)
    assert np.isnan(scene_target_xy(seed, "pick up the other thing")).all()
    state = np.zeros((6, 7), np.float32)
    state[3:, 6] = [0.8, 1.0, 0.1]
    goals = dagger_goals(seed, instruction, state)
    assert np.allclose(goals[:3], start, atol=1e-4) and np.isnan(goals[3:]).all()


def test_train_goal_policy_warm_starts_from_a_bundles_policy(tmp_path, tiny_policy_bundle, demo_dataset):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_policy_bundle, ckpt)
    args = ["train", "policy", "--data", str(demo_dataset), "--out", str(ckpt), "--preset", "tiny", "--quiet"]
    assert main([*args, "--steps", "3", "--goal-input", "--init-from", str(tiny_policy_bundle)]) == 0
    modules = json.loads((ckpt / "config.json").read_text())["modules"]
    meta = modules["goal_policy"]["meta"]
    assert meta["init"] == str(tiny_policy_bundle) and meta["goal_samples"] == meta["samples"]
    assert "masked_end_error_cm" in meta["eval"]
    goal_policy, policy = load_policy(ckpt, "goal_policy"), load_policy(ckpt)
    assert goal_policy.config == replace(policy.config, goal_input=True)  # vocabulary and normalisation kept
    assert modules["policy"] == json.loads((tiny_policy_bundle / "config.json").read_text())["modules"]["policy"]
    # a goal input only for policies, and --init-from must exist
    assert main([*args, "--steps", "3", "--goal-input", "--init-from", str(tmp_path / "nowhere")]) == 2
    code = main(["train", "value", "--data", str(demo_dataset), "--out", str(tmp_path / "v"), "--goal-input"])
    assert code == 2
