"""Training the UQ, value and semantic heads: stages learn, targets are right, the CLI writes the bundle."""

import json

import pytest
import torch

from vidplan_server.cli import main
from vidplan_server.models.bins import ERROR_BINS
from vidplan_server.models.heads import HeadNetConfig, UQHeadConfig, ValueHeadConfig, discounted_returns
from vidplan_server.models.world_model import load_flow_map
from vidplan_server.training import presets
from vidplan_server.training.commands import TrainOptions, _windows, semantic_frames
from vidplan_server.training.head_stages import (
    SemanticStage,
    UQStage,
    ValueData,
    ValueStage,
    centroid_hits,
    flow_rollouts,
    gaussian_blur,
)
from vidplan_server.training.loop import LoopConfig, train

NET = HeadNetConfig(channels=(8, 8, 16), attention_heads=2, embed_dim=8)


def _windows_and_flow(tiny_bundle, tiny_dataset):
    flow_map, cfg = load_flow_map(tiny_bundle)
    opts = TrainOptions(data=tiny_dataset, out=tiny_bundle, progress=False)
    w = cfg.world
    train_w, held_w, _, _, eps = _windows(opts, w.net.history, w.net.horizon, w.frame_stride, w.actions)
    return flow_map, train_w, held_w, eps


def test_flow_rollouts_are_cached_detached_and_seeded(tmp_path, tiny_bundle, tiny_dataset):
    flow_map, train_w, _, _ = _windows_and_flow(tiny_bundle, tiny_dataset)
    file = tiny_bundle / "flow_map.safetensors"
    a = flow_rollouts(flow_map, file, train_w, 1, tmp_path, torch.device("cpu"), seed=0, progress=False)
    assert a.shape == (len(train_w), 5, 4, 48, 16) and not a.requires_grad
    assert len(list(tmp_path.iterdir())) == 1
    again = flow_rollouts(flow_map, file, train_w, 1, tmp_path, torch.device("cpu"), seed=0, progress=False)
    assert torch.equal(a, again)
    other = flow_rollouts(flow_map, file, train_w, 1, tmp_path, torch.device("cpu"), seed=1, progress=False)
    assert not torch.equal(a, other) and len(list(tmp_path.iterdir())) == 2


def test_uq_stage_targets_are_the_bins_of_the_rollout_error_and_training_lowers_the_loss(
    tmp_path, tiny_bundle, tiny_dataset
):
    flow_map, train_w, held_w, _ = _windows_and_flow(tiny_bundle, tiny_dataset)
    file = tiny_bundle / "flow_map.safetensors"
    preds = [
        flow_rollouts(flow_map, file, w, 1, tmp_path / "r", torch.device("cpu"), progress=False)
        for w in (train_w, held_w)
    ]
    torch.manual_seed(0)
    stage = UQStage(UQHeadConfig(net=NET), (train_w, preds[0]), (held_w, preds[1]))
    idx = torch.tensor([0, 1])
    hist, pred, target = stage._gather(stage.train_set, idx, torch.device("cpu"))
    _, _, fut = train_w.gather(idx, torch.device("cpu"))
    assert torch.equal(target, ERROR_BINS.index((preds[0][idx].float() - fut).abs()))
    g = torch.Generator().manual_seed(0)
    batch = stage.batch(g, 4, torch.device("cpu"))
    with torch.no_grad():
        before = stage.loss(stage.model, batch, g)[0].item()
    train(
        stage,
        LoopConfig(steps=25, batch_size=4, lr=3e-3, warmup_steps=1, eval_every=25, save_every=25),
        tmp_path / "ckpt",
        progress=False,
    )
    with torch.no_grad():
        after = stage.loss(stage.model, batch, g)[0].item()
    assert after < 0.7 * before


def test_value_stage_labels_are_discounted_returns_of_the_future_frames(tiny_bundle, tiny_dataset):
    flow_map, train_w, held_w, (train_eps, held_eps) = _windows_and_flow(tiny_bundle, tiny_dataset)
    gamma = 0.9
    returns = torch.cat([discounted_returns(len(ep.action), ep.success, gamma) for ep in train_eps])
    held = torch.cat([discounted_returns(len(ep.action), ep.success, gamma) for ep in held_eps])
    stage = ValueStage(
        ValueHeadConfig(net=NET, gamma=gamma), flow_map, 1, ValueData(train_w, returns), ValueData(held_w, held)
    )
    g = torch.Generator().manual_seed(0)
    latents, labels = stage.batch(g, 4, torch.device("cpu"))
    assert latents.shape == (4, 5, 4, 48, 16) and labels.shape == (4, 5)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(len(train_w), (4,), generator=g)
    assert torch.equal(labels, returns[train_w.index["future"][idx]])
    # the first half of the batch is the flow map's prediction, the rest the true future
    _, _, fut = train_w.gather(idx, torch.device("cpu"))
    assert torch.equal(latents[2:], fut[2:]) and not torch.equal(latents[:2], fut[:2])


def test_hl_gauss_targets_are_histograms_centred_on_the_value():
    from vidplan_server.models.bins import VALUE_BINS
    from vidplan_server.training.head_stages import hl_gauss_target

    values = torch.tensor([0.0, 0.33, 0.52, 1.0])
    t = hl_gauss_target(values, VALUE_BINS, 0.75 * VALUE_BINS.width)
    assert t.shape == (4, 20) and torch.allclose(t.sum(-1), torch.ones(4))
    assert t.argmax(-1).tolist() == [0, 6, 10, 19]
    assert (t[1] * VALUE_BINS.centres()).sum().item() == pytest.approx(0.33, abs=0.01)


def test_semantic_frames_and_stage(tmp_path, tiny_dataset):
    frames = semantic_frames(tiny_dataset, [0, 1], (64, 64), 16, 6, progress=False)
    assert frames.images.shape[1:] == (64, 64, 3) and frames.masks.shape[1:] == (16, 16)
    assert len(frames.images) == len(frames.masks) == len(frames.text) and len(frames.instructions) == 2
    assert frames.masks.max() <= 1.0 and frames.masks.max() > 0  # the target is visible somewhere
    cfg = presets.SEMANTIC["tiny"].model
    stage = SemanticStage(cfg, frames, frames)
    g = torch.Generator().manual_seed(0)
    batch = stage.batch(g, 8, torch.device("cpu"))
    loss, parts = stage.loss(stage.model, batch, g)
    assert torch.isfinite(loss) and set(parts) == {"clip", "dense"}
    metrics = stage.evaluate(stage.model, torch.device("cpu"))
    assert 0.0 <= metrics["retrieval"] <= 1.0


def test_gaussian_blur_keeps_constants_and_smooths_edges():
    x = torch.zeros(2, 3, 16, 16)
    x[:, :, :, 8:] = 1.0
    y = gaussian_blur(x, torch.tensor([0.0, 1.5]))
    assert torch.allclose(y[0], x[0], atol=1e-4)  # sigma 0: unchanged
    assert 0.05 < y[1, 0, 0, 7] < 0.5 and y[1, 0, 0, 0] < 1e-3
    assert torch.allclose(gaussian_blur(torch.ones(1, 3, 8, 8), torch.tensor([1.0])), torch.ones(1, 3, 8, 8))


def test_centroid_hits():
    mask = torch.zeros(2, 4, 4)
    mask[0, 1, 2] = 1
    c = torch.tensor([[0.6, 0.3], [0.6, 0.3]])
    assert centroid_hits(c, mask).tolist() == [True, False]


def test_cli_trains_all_three_heads_into_the_bundle(tiny_heads_bundle):
    manifest = json.loads((tiny_heads_bundle / "config.json").read_text())
    modules = manifest["modules"]
    assert {"uq", "value", "semantic", "colormap"} <= set(modules)
    assert modules["uq"]["config"]["flow_steps"] == 1
    assert modules["value"]["config"]["gamma"] == 0.99
    assert "the" in modules["semantic"]["config"]["vocab"]  # every sim instruction has it
    assert modules["colormap"]["config"]["method"] == "decoder_inversion"


def test_cli_rejects_bad_head_options(tmp_path, tiny_dataset, tiny_bundle, capsys):
    assert main(["train", "uq", "--data", str(tiny_dataset), "--out", str(tmp_path / "none"), "--quiet"]) == 2
    assert "run `vidplan train flowmap" in capsys.readouterr().err
    assert (
        main(["train", "value", "--data", str(tiny_dataset), "--out", str(tiny_bundle), "--gamma", "0", "--quiet"]) == 2
    )
    assert "--gamma must be in (0, 1]" in capsys.readouterr().err
