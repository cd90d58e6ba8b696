"""The semantic encoder on captioned renders: batches are right, the tiny stage learns, the CLI writes the module."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from vidplan_server.cli import main
from vidplan_server.sim.caption_text import simulator_vocabulary
from vidplan_server.sim.captions import CaptionConfig, generate_captions, load_captions
from vidplan_server.training import presets
from vidplan_server.training.caption_stage import (
    MAX_ENTITIES,
    CaptionSemanticStage,
    CaptionTrainConfig,
    CaptionViews,
    dense_weights,
    localisation_loss,
    split_images,
)
from vidplan_server.training.commands import semantic_frames

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
    out = tmp_path_factory.mktemp("captions") / "caps"
    generate_captions(out, 6, seed=1, cfg=replace(CaptionConfig(), images_per_shard=3), workers=1, progress=False)
    return out


def _stage(captions, robot=None, **cfg) -> CaptionSemanticStage:
    data = load_captions(captions)
    train, held = split_images(data, 0.1)
    assert (train, held) == ([0, 1, 2], [3, 4, 5])  # whole shards, so no scene is on both sides
    views = [CaptionViews.from_captions(data, ix) for ix in (train, held)]
    for v in views:  # stand-in for the codec's round trip: the same pixels, marked as available
        v.has_codec, v.codec = np.ones(len(v), bool), v.images.copy()
    config = replace(presets.SEMANTIC["tiny"].model, vocab=simulator_vocabulary())
    return CaptionSemanticStage(
        config, *views, CaptionTrainConfig(robot_share=0.25 if robot else 0.0, **cfg), robot, robot
    )


def test_batch_masks_and_positives_follow_the_captions(captions):
    stage = _stage(captions)
    batch = stage.batch(torch.Generator().manual_seed(0), 8, CPU)
    assert batch["img"].shape == (8, 3, 64, 64) and len(batch["text_of"]) == 16  # two captions per view
    data = stage.train_set
    match, view_of, pos = batch["match"].numpy(), batch["view_of"].numpy(), batch["pos"].numpy()
    assert match.shape == (16, MAX_ENTITIES) and (match[:, 0] == 0).all()
    labels = batch["labels"].numpy()
    for c in range(16):
        b = view_of[c]
        refs = np.flatnonzero(match[c])
        assert len(refs) >= 1  # a caption refers to at least the entity it was drawn for
        visible = [data.pixels[batch["idx"][b], r] >= 4 for r in refs]
        assert pos[b, c] == any(visible)  # its own view is a positive exactly when the referent shows
        assert all(((labels[b] == r).sum() >= 4) == v for r, v in zip(refs, visible, strict=True))


def test_dense_weights_balance_each_caption_and_stress_hard_negatives():
    masks, others = torch.zeros(3, 4, 4), torch.zeros(3, 4, 4)
    masks[0, 1, 1] = 1.0  # a one-patch object
    masks[1, :2] = 0.5  # an object over eight patches
    others[0, 2, 2] = others[2, 0, 0] = 1.0  # another entity of the image; caption 2's referent is hidden
    w = dense_weights(masks, others, hard_negative_weight=3.0)
    for c in (0, 1):  # small or large, the referent's patches weigh 0.5 in all, the rest 0.5
        assert w[c][masks[c] > 0].sum().item() == pytest.approx(0.5)
        assert w[c][masks[c] == 0].sum().item() == pytest.approx(0.5)
    assert w[2].sum().item() == pytest.approx(1.0)  # hidden referent: only negatives
    assert w[0, 2, 2].item() == pytest.approx(3.0 * w[0, 3, 3].item())


def test_localisation_loss_is_low_when_the_peak_is_on_the_referent():
    masks = torch.zeros(1, 4, 4)
    masks[0, 1, 1] = 1.0
    on, off, flat = torch.zeros(1, 4, 4), torch.zeros(1, 4, 4), torch.zeros(1, 4, 4)
    on[0, 1, 1] = off[0, 3, 3] = 5.0
    assert localisation_loss(on, masks) < 0.1 < localisation_loss(flat, masks) < localisation_loss(off, masks)
    assert localisation_loss(flat, masks).item() == pytest.approx(np.log(16))  # uniform over 16 patches
    assert localisation_loss(torch.zeros(0, 4, 4), torch.zeros(0, 4, 4)).item() == 0.0


def test_tiny_stage_lowers_its_loss(captions, tiny_dataset):
    robot = semantic_frames(tiny_dataset, [0, 1], (64, 64), 16, 6, progress=False)
    stage = _stage(captions, robot)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    batch = stage.batch(g, 16, CPU)
    assert len(batch["robot_img"]) == 4  # robot_share of the batch
    opt = torch.optim.Adam(stage.model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, parts = stage.loss(stage.model, batch, g)
        assert set(parts) == {"clip", "dense", "region", "loc"} and torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    metrics = stage.evaluate(stage.model.eval(), CPU)
    assert {"hit_seen", "hit_novel", "hit_wrist", "hit_seen_codec", "hit_robot"} <= set(metrics)
    assert all(0.0 <= v <= 1.0 for v in metrics.values() if not np.isnan(v))


def test_cli_trains_on_captions_into_the_bundle(tmp_path, captions, tiny_bundle, tiny_dataset):
    out = tmp_path / "ckpt"
    shutil.copytree(tiny_bundle, out)
    assert (
        main(
            [
                "train",
                "semantic",
                "--captions",
                str(captions),
                "--data",
                str(tiny_dataset),
                "--out",
                str(out),
                "--preset",
                "tiny",
                "--steps",
                "3",
                "--frame-step",
                "6",
                "--quiet",
            ]
        )
        == 0
    )
    entry = json.loads((out / "config.json").read_text())["modules"]["semantic"]
    assert set(simulator_vocabulary()) <= set(entry["config"]["vocab"])
    assert entry["meta"]["captions"] == str(captions) and entry["meta"]["robot_frames"] > 0
    assert entry["meta"]["codec_from"] == str(out)  # the bundle's own codec
    assert len(list((out / "training" / "semantic_codec").glob("*.safetensors"))) == 2  # train and held-out
    assert main(["train", "value", "--captions", str(captions), "--data", str(tiny_dataset), "--out", str(out)]) == 2
