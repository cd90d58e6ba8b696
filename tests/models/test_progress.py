"""Progress head: one positive distance per rollout that depends on the target map, shapes checked; target maps
stack the views' relevance in the codec's order."""

from __future__ import annotations

import pytest
import torch

from vidplan_server.models.codec import Codec, CodecConfig
from vidplan_server.models.progress import ProgressHead, ProgressHeadConfig, target_maps
from vidplan_server.models.semantic import SemanticBackend, SemanticScores

TINY = ProgressHeadConfig(channels=(8, 8, 8), hidden=16)


def test_head_gives_a_positive_distance_per_rollout_that_depends_on_the_target_map():
    torch.manual_seed(0)
    head = ProgressHead(TINY).eval()
    latents = torch.randn(3, 4, 48, 16)
    here = torch.zeros(3, 48, 16)
    here[:, 4:8, 4:8] = 1.0
    there = torch.zeros(3, 48, 16)
    there[:, 36:40, 10:14] = 1.0
    with torch.no_grad():
        a, b = head(latents, here), head(latents, there)
    assert a.shape == (3,) and bool((a > 0).all())
    assert not torch.allclose(a, b)


def test_head_refuses_latents_or_maps_of_the_wrong_shape():
    head = ProgressHead(TINY)
    with pytest.raises(ValueError, match=r"latents \(B, 4, 48, 16\)"):
        head(torch.zeros(2, 4, 32, 16), torch.zeros(2, 32, 16))
    with pytest.raises(ValueError, match="target map"):
        head(torch.zeros(2, 4, 48, 16), torch.zeros(2, 16, 16))
    with pytest.raises(ValueError, match="divisible by 4"):
        ProgressHeadConfig(view_size=(10, 16))


class ViewIndexSemantic(SemanticBackend):
    """Relevance = (index of the image in the batch) / 100 everywhere, so the layout can be read back."""

    image_size = (16, 16)

    def encode_text(self, texts):
        return torch.ones(len(texts), 4)

    def score(self, images, text):
        n = len(images)
        assert text.shape == (n, 4)
        rel = torch.arange(n, dtype=torch.float32)[:, None, None].expand(n, 8, 8) / 100
        return SemanticScores(torch.zeros(n), rel, torch.full((n, 2), 0.5))


def test_target_maps_stack_each_rollouts_views_along_the_height_on_the_latent_grid():
    codec = Codec(CodecConfig(image_size=(16, 16), block_out_channels=(8, 8), norm_num_groups=4)).eval()
    C, Vh, w = codec.config.latent_shape
    maps = target_maps(codec, ViewIndexSemantic(), torch.zeros(2, C, Vh, w), torch.ones(4))
    h = Vh // 3
    assert maps.shape == (2, Vh, w)
    for b in range(2):
        for v in range(3):
            assert torch.allclose(maps[b, v * h : (v + 1) * h], torch.tensor((3 * b + v) / 100))


def test_the_locator_answers_a_position_in_metres_around_its_data_mean():
    from vidplan_server.models.progress import LocatorConfig, TargetLocator

    cfg = LocatorConfig(channels=(8, 8, 8), hidden=16, position_mean=(0.5, -0.1, 0.02), position_scale=(0.1, 0.1, 0.01))
    loc = TargetLocator(cfg).eval()
    torch.nn.init.zeros_(loc.mlp[-1].weight)
    torch.nn.init.zeros_(loc.mlp[-1].bias)
    out = loc(torch.randn(2, 4, 48, 16), torch.rand(2, 48, 16))
    assert out.shape == (2, 3) and torch.allclose(out, torch.tensor([0.5, -0.1, 0.02]).expand(2, 3))
