"""Online world-model data: branches from recorded states, and world-model windows made of them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from vidplan_server.apps.branches import BranchConfig, BranchError, pick_states, record_branches
from vidplan_server.data.branches import read_branches, shard_files


def test_pick_states_keeps_open_gripper_steps_after_the_history():
    grippers = [np.array([0, 0, 0, 0, 0.9, 0.9, 0]), np.array([0.5] * 5)]
    states = pick_states([7, 5], grippers, 10, first=3, seed=0)
    assert states == [(0, 3), (0, 6)]
    with pytest.raises(BranchError, match="gripper open"):
        pick_states([5], [np.ones(5)], 3, first=3, seed=0)


def test_branches_record_resume_and_feed_the_world_model(tmp_path, tiny_policy_bundle, tiny_dataset):
    from vidplan_server.cli import main

    out = tmp_path / "branches"
    cfg = BranchConfig(states=2, proposals=3, policy_samples=1)
    s = record_branches(tiny_dataset, tiny_policy_bundle, out, cfg, progress=False)
    assert s["new"] == 2 and s["branches"] == 6
    frames, actions = read_branches(shard_files(out))
    manifest = json.loads((out / "branches.json").read_text())
    T, H = manifest["history"], manifest["horizon"]
    assert frames.shape[:3] == (6, T + H, 3) and actions.shape == (6, H, 7)
    # The three branches of a state share their recorded history and differ in the future they rendered.
    assert np.array_equal(frames[0, :T], frames[2, :T])
    assert not np.array_equal(frames[0, T:], frames[1, T:]) or not np.array_equal(actions[0], actions[1])
    assert record_branches(tiny_dataset, tiny_policy_bundle, out, cfg, progress=False)["new"] == 0
    with pytest.raises(BranchError, match="proposals"):
        record_branches(tiny_dataset, tiny_policy_bundle, out, BranchConfig(states=2, proposals=4), progress=False)

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_policy_bundle, ckpt, ignore=shutil.ignore_patterns("training"))
    base = ["train", "world", "--data", str(tiny_dataset), "--preset", "tiny", "--steps", "2", "--quiet"]
    assert main([*base, "--out", str(ckpt), "--init-from", str(tiny_policy_bundle)]) == 0
    plain = json.loads((ckpt / "config.json").read_text())["modules"]["world"]["meta"]["windows"]
    ckpt2 = tmp_path / "ckpt2"
    shutil.copytree(tiny_policy_bundle, ckpt2, ignore=shutil.ignore_patterns("training"))
    assert main([*base, "--out", str(ckpt2), "--init-from", str(tiny_policy_bundle), "--extra-data", str(out)]) == 0
    meta = json.loads((ckpt2 / "config.json").read_text())["modules"]["world"]["meta"]
    assert meta["branches"] == [str(out)] and meta["windows"] > plain  # the training shard's branches added
