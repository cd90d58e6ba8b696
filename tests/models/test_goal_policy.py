"""The goal policy: its target-map input, the warm start from a policy, its training maps and stage."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.models.test_policy import TINY as BASE
from tests.models.test_policy import inputs
from vidplan_server.cli import main
from vidplan_server.models.policy import FlowPolicy, load_policy, with_target_map
from vidplan_server.models.semantic import SemanticConfig, Tokenizer
from vidplan_server.training.policy_stage import (
    MapAugment,
    PolicyData,
    PolicyStage,
    add_target_maps,
    mask_target_words,
)

TINY = replace(BASE, vocab=("cube", "pick", "put", "red", "the", "tray", "in", "up"))


def test_the_map_steers_samples_and_no_map_is_zeros():
    torch.manual_seed(0)
    policy = FlowPolicy(replace(TINY, target_map=True)).eval()
    images, state = inputs(2)
    noise = torch.randn(2, 3, 15, 7)
    text = ["pick up the red cube"] * 2
    left, right = torch.zeros(2, 3, 16, 16), torch.zeros(2, 3, 16, 16)
    left[..., 4:8, 2:5], right[..., 4:8, 10:14] = 1.0, 1.0
    with torch.no_grad():
        a = policy.sample(images, state, text, noise, left)
        b = policy.sample(images, state, text, noise, right)
        zeros = policy.sample(images, state, text, noise, torch.zeros(2, 3, 16, 16))
        none = policy.sample(images, state, text, noise, None)
        # any map grid is resized to the image
        full = policy.sample(images, state, text, noise, torch.nn.functional.interpolate(left, size=(64, 64)))
    assert not torch.allclose(a, b) and torch.equal(zeros, none) and torch.isfinite(full).all()
    # A policy without the map channel ignores a map.
    plain = FlowPolicy(TINY).eval()
    with torch.no_grad():
        assert torch.equal(plain.sample(images, state, text, noise, left), plain.sample(images, state, text, noise))


def test_the_warm_start_computes_what_the_policy_computes_whatever_the_map():
    torch.manual_seed(1)
    policy = FlowPolicy(TINY).eval()
    warm = with_target_map(policy).eval()
    assert warm.config == replace(TINY, target_map=True)
    images, state = inputs(2, seed=3)
    noise = torch.randn(2, 2, 15, 7)
    text = ["pick up the red cube", "put the red cube in the tray"]
    with torch.no_grad():
        expected = policy.sample(images, state, text, noise)
        assert torch.equal(warm.sample(images, state, text, noise, torch.rand(2, 3, 16, 16)), expected)
    with pytest.raises(ValueError, match="already takes a target map"):
        with_target_map(warm)


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


class BrightnessMaps:
    """A stand-in semantic backend: relevance = the frame's mean colour on a 4 x 4 grid (per text row)."""

    def encode_text(self, texts):
        return torch.arange(len(texts), dtype=torch.float32)[:, None].repeat(1, 4)

    def score(self, images, text):
        from types import SimpleNamespace

        assert len(images) == len(text)
        return SimpleNamespace(relevance=torch.nn.functional.avg_pool2d(images.mean(1, keepdim=True), 16)[:, 0])


def small_data(n=64):
    frames = np.zeros((n, 3, 64, 64, 3), np.uint8)
    frames[:, :, 16:32, 32:48] = 255  # a bright patch: cell (1, 2) of a 4 x 4 grid, in every view
    return PolicyData(
        frames=frames,
        state=np.tile(np.array([0.5, 0.0, 0.2, math.pi, 0.0, 0.0, 0.0], np.float32), (n, 1)),
        chunk=np.zeros((n, 15, 7), np.float32),
        text=np.zeros(n, int),
        instructions=["pick up the red cube"],
    )


def test_target_maps_are_the_backends_relevance_per_view():
    data = add_target_maps(small_data(10), BrightnessMaps(), batch=4, progress=False)
    assert data.maps.shape == (10, 3, 4, 4) and data.maps.dtype == np.float16
    assert np.allclose(data.maps[:, :, 1, 2], 1.0) and np.allclose(data.maps[:, :, 0, :], 0.0)
    both = PolicyData.concat([data, data])
    assert both.maps.shape == (20, 3, 4, 4)
    assert PolicyData.concat([data, small_data(2)]).maps is None  # maps only when every part has them


def test_the_goal_stage_drops_maps_masks_words_and_shifts_each_view_with_its_map():
    data = add_target_maps(small_data(), BrightnessMaps(), progress=False)
    stage = PolicyStage(replace(TINY, target_map=True), data, data, augment=MapAugment(0.5, 0.25))
    assert stage.name == "goal_policy"
    g = torch.Generator().manual_seed(0)
    images, _, texts, _, maps, positions = stage.batch(g, 64, torch.device("cpu"))
    assert positions is None  # these samples carry no object positions: no auxiliary labels
    assert images.shape == (64, 3, 3, 64, 64) and maps.shape == (64, 3, 64, 64)
    kept = maps.flatten(1).amax(1) > 0
    assert 0.55 < kept.float().mean() < 0.95  # about a quarter dropped
    # where a map is kept it is centred on its view's (shifted) bright patch
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")

    def centre(w):  # (..., 64, 64) weights -> (..., 2) weighted mean (y, x)
        w = w / w.sum((-2, -1), keepdim=True)
        return torch.stack([(w * yy).sum((-2, -1)), (w * xx).sum((-2, -1))], -1)

    bright = centre((images.mean(2) > 0.5).float()[kept])
    assert (centre(maps[kept]) - bright).abs().max() < 0.5
    assert (bright - torch.tensor([23.5, 39.5])).abs().amax(-1).max() <= 4  # shifted by up to 4 px
    assert len(set(bright[:, 0, 1].tolist())) > 3  # ... by different amounts
    assert 0.2 < np.mean([t != "pick up the red cube" for t in texts]) < 0.8
    plain = PolicyStage(TINY, data, data)
    assert plain.name == "policy" and plain.batch(g, 4, torch.device("cpu"))[4] is None
    with pytest.raises(ValueError, match="maps"):
        PolicyStage(replace(TINY, target_map=True), small_data(), small_data())


def test_train_goal_policy_warm_starts_from_a_bundles_policy(tmp_path, tiny_policy_bundle, demo_dataset):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_policy_bundle, ckpt)
    args = ["train", "policy", "--data", str(demo_dataset), "--out", str(ckpt), "--preset", "tiny", "--quiet"]
    assert main([*args, "--steps", "3", "--target-map", "--init-from", str(tiny_policy_bundle)]) == 0
    modules = json.loads((ckpt / "config.json").read_text())["modules"]
    meta = modules["goal_policy"]["meta"]
    assert meta["init"] == meta["semantic"] == str(tiny_policy_bundle)
    assert "masked_end_error_cm" in meta["eval"]
    goal_policy, policy = load_policy(ckpt, "goal_policy"), load_policy(ckpt)
    assert goal_policy.config == replace(policy.config, target_map=True)  # vocabulary and normalisation kept
    assert modules["policy"] == json.loads((tiny_policy_bundle / "config.json").read_text())["modules"]["policy"]
    # a map input only for policies, and --init-from must exist
    assert main([*args, "--steps", "3", "--target-map", "--init-from", str(tmp_path / "nowhere")]) == 2
    code = main(["train", "value", "--data", str(demo_dataset), "--out", str(tmp_path / "v"), "--target-map"])
    assert code == 2


def test_train_goal_policy_fine_tunes_a_bundles_goal_policy(
    tmp_path, tiny_goal_bundle, tiny_policy_bundle, demo_dataset
):
    """``--init-module goal_policy``: the run starts from the bundle's goal policy as it is (map channel trained),
    not from its policy with the map channel at zero."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_goal_bundle, ckpt)
    shutil.rmtree(ckpt / "training" / "goal_policy")  # a new run, not the fixture's resumed
    before = load_policy(tiny_goal_bundle, "goal_policy")
    args = ["train", "policy", "--data", str(demo_dataset), "--out", str(ckpt), "--preset", "tiny", "--quiet"]
    init = ["--target-map", "--init-from", str(tiny_goal_bundle), "--init-module", "goal_policy"]
    assert main([*args, "--steps", "2", "--lr", "1e-9", *init]) == 0
    meta = json.loads((ckpt / "config.json").read_text())["modules"]["goal_policy"]["meta"]
    assert meta["init_module"] == "goal_policy"
    after = load_policy(ckpt, "goal_policy")
    assert after.config == before.config
    map_w = lambda p: p.state_dict()["blocks.0.conv1.weight"][:, 3]  # noqa: E731 - the map channel's weights
    assert map_w(before).abs().sum() > 0, "the fixture's goal policy has trained its map channel"
    torch.testing.assert_close(map_w(after), map_w(before), atol=1e-5, rtol=0)
    # only for a goal policy, and only from a bundle that has one
    assert main([*args, "--steps", "2", "--init-from", str(tiny_goal_bundle), "--init-module", "goal_policy"]) == 2
    no_goal = ["--target-map", "--init-from", str(tiny_policy_bundle), "--init-module", "goal_policy"]
    assert main([*args, "--steps", "2", *no_goal]) == 2
