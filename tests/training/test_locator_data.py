"""The target locator's data: the recordings' anchor frames, captioned renders with each object's map and position,
and `vidplan train locator --captions DIR`."""

from __future__ import annotations

import shutil
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.training.test_progress_stage import WordSemantic
from vidplan_server.cli import main
from vidplan_server.models.checkpoint import read_manifest
from vidplan_server.models.codec import Codec, CodecConfig
from vidplan_server.models.semantic import SemanticScores
from vidplan_server.sim.caption_text import Entity
from vidplan_server.sim.captions import CaptionConfig, CaptionSet, generate_captions
from vidplan_server.training.locator_data import (
    LocatorData,
    caption_instructions,
    caption_locator_data,
    split_renders,
)


class RedSemantic(WordSemantic):
    """Relevance = the frame's red channel, averaged over 2x2 pixels."""

    def score(self, images, text):
        rel = F.avg_pool2d(images[:, :1], 2)[:, 0]
        return SemanticScores(torch.zeros(len(images)), rel, torch.full((len(images), 2), 0.5))


def _renders(positions: bool = True) -> CaptionSet:
    rng = np.random.default_rng(0)
    entities = [
        [Entity("cube", "red"), Entity("duck", "blue"), Entity("bowl", "grey", "container")],
        [Entity("lego", "green"), Entity("basket", "black", "container")],
        [Entity("cube", "blue"), Entity("cube", "red"), Entity("duck", "green"), Entity("tray", "grey", "container")],
    ]
    where = np.full((3, 3, 3), np.nan, np.float32)
    for i, ents in enumerate(entities):
        n = sum(e.kind == "object" for e in ents)
        where[i, :n] = rng.uniform(0.0, 0.5, (n, 3))
    where[2, 1, 2] = -1e30  # an object the physics threw through the table
    return CaptionSet(
        images=rng.integers(0, 255, (3, 3, 32, 32, 3), dtype=np.uint8),
        labels=np.zeros((3, 3, 32, 32), np.uint8),
        entities=entities,
        tcp=np.zeros((3, 6), np.float32),
        positions=where if positions else None,
    )


def test_render_instructions_name_each_object_in_the_task_forms():
    texts = caption_instructions(_renders(), seed=1)
    assert [len(t) for t in texts] == [2, 1, 3]
    assert texts[0][0] in ("put the red cube in the bowl", "pick up the red cube")
    assert texts[1][0] in ("put the green lego in the basket", "pick up the green lego")
    assert texts[2][2] in ("put the green duck in the tray", "pick up the green duck")
    many = caption_instructions(replace(_renders(), entities=_renders().entities * 100), seed=2)
    share = np.mean([t.startswith("put") for row in many for t in row])
    assert 0.6 < share < 0.8  # the place / pick odds of sample_task


def test_renders_become_frames_with_each_objects_map_and_position():
    codec = Codec(CodecConfig(image_size=(16, 16), block_out_channels=(8, 8), norm_num_groups=4)).eval()
    renders = _renders()
    data = caption_locator_data(renders, codec, WordSemantic(), torch.device("cpu"), progress=False)
    C, Vh, w = codec.config.latent_shape
    assert data.latents.shape == (3, C, Vh, w) and data.maps.shape == (3, 3, Vh, w)
    assert data.valid.tolist() == [[True, True, False], [True, False, False], [True, False, True]]
    torch.testing.assert_close(data.positions, torch.from_numpy(renders.positions), equal_nan=True)
    # each map is the named object's: WordSemantic's relevance is 0.1 for "red", 0.2 for "blue", 0.3 otherwise
    levels = data.maps.float().mean((-2, -1))
    expected = [[0.1, 0.2, 0.0], [0.3, 0.0, 0.0], [0.2, 0.1, 0.3]]
    torch.testing.assert_close(levels, torch.tensor(expected), atol=1e-3, rtol=0)
    # the latents are the codec's encoding of the images resized to its input size
    frame = torch.nn.functional.interpolate(
        torch.from_numpy(renders.images[0]).permute(0, 3, 1, 2).float() / 255, size=(16, 16), mode="area"
    )
    torch.testing.assert_close(data.latents[0].float(), codec.encode(frame[None])[0], atol=0.05, rtol=0)
    # "frames": the maps are the encoder's over the rendered frames; "codec": over the codec's round trip
    red = RedSemantic()
    over_frames = caption_locator_data(renders, codec, red, torch.device("cpu"), progress=False)
    small = np.stack([[cv2.resize(v, (16, 16), interpolation=cv2.INTER_AREA) for v in im] for im in renders.images])
    expected = F.avg_pool2d(torch.from_numpy(small[..., 0]).float().flatten(0, 1)[:, None] / 255, 2)
    torch.testing.assert_close(over_frames.maps[:, 0].float(), expected.reshape(3, Vh, w), atol=2e-3, rtol=0)
    over_codec = caption_locator_data(renders, codec, red, torch.device("cpu"), progress=False, map_source="codec")
    assert (over_codec.maps[:, 0].float() - expected.reshape(3, Vh, w)).abs().mean() > 0.05
    with pytest.raises(ValueError, match="no object positions"):
        caption_locator_data(_renders(positions=False), codec, WordSemantic(), torch.device("cpu"), progress=False)


def test_whole_shards_are_held_out():
    n = 50
    data = LocatorData(
        torch.arange(n).half()[:, None, None, None],
        torch.zeros(n, 1, 1, 1),
        torch.ones(n, 1).bool(),
        torch.zeros(n, 1, 3),
    )
    train, held = split_renders(data, images_per_shard=2, every=5)  # 25 shards: shards 4, 9, ... held out
    assert held.latents.flatten().tolist() == [s * 2 + k for s in (4, 9, 14, 19, 24) for k in (0, 1)]
    assert len(train) + len(held) == n and not set(train.latents.flatten().tolist()) & set(
        held.latents.flatten().tolist()
    )
    few_train, few_held = split_renders(data, images_per_shard=10, every=20)  # 5 shards: the last one held out
    assert few_held.latents.flatten().tolist() == list(range(40, 50)) and len(few_train) == 40
    with pytest.raises(ValueError, match="one shard"):
        split_renders(data, images_per_shard=50)


@pytest.mark.slow
def test_cli_trains_the_locator_on_renders_too(tiny_heads_bundle, tiny_dataset, tmp_path):
    renders = tmp_path / "renders"
    generate_captions(
        renders,
        2,
        seed=3,
        cfg=replace(CaptionConfig(), images_per_shard=1, poses_per_scene=1),
        workers=1,
        progress=False,
    )
    out = tmp_path / "ckpt"
    shutil.copytree(tiny_heads_bundle, out)
    args = ["train", "locator", "--data", str(tiny_dataset), "--out", str(out), "--preset", "tiny", "--steps", "2"]
    assert main([*args, "--captions", str(renders), "--quiet"]) == 0
    entry = read_manifest(out)["modules"]["locator"]
    meta = entry["meta"]
    assert meta["captions"] == str(renders) and {"position_error_m", "nearest_object_rate"} <= set(meta["eval"])
    assert entry["config"]["map_source"] == "frames" and (meta["train_images"], meta["held_out_images"]) == (1, 1)
    assert list((out / "training" / "progress_data").glob("captions_*.safetensors"))  # the renders' maps, cached
    code = main(["train", "value", "--data", str(tiny_dataset), "--out", str(out), "--captions", str(renders)])
    assert code != 0
