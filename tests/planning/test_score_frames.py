"""The selection score on a subset of the predicted frames (ScoreConfig.frames): only those frames are decoded,
the score is theirs, and the returned rollout's per-frame terms are completed to all H frames."""

from __future__ import annotations

import pytest
import torch

from tests.planning.test_objective import ConstantUQ, FixedSemantic
from vidplan_server.models.checkpoint import DEFAULT_CHECKPOINT
from vidplan_server.models.world_model import load_codec
from vidplan_server.planning import objective
from vidplan_server.planning.objective import ScoreConfig, complete_frames, judge, scored_frame_ids


class GrowingSemantic(FixedSemantic):
    """A relevance blob whose size follows the image's brightness, so every frame scores differently."""

    def score(self, images, text):
        base = super().score(images, text)
        size = images.mean((1, 2, 3))[:, None, None]
        return base.__class__(base.frame, base.relevance * size, base.centroid)


@pytest.fixture(scope="module")
def codec():
    return load_codec(DEFAULT_CHECKPOINT).eval()


def test_frame_ids():
    assert scored_frame_ids(5, ScoreConfig(frames=None)) == [0, 1, 2, 3, 4]
    assert scored_frame_ids(5, ScoreConfig()) == [4]  # the default: the last frame
    assert scored_frame_ids(5, ScoreConfig(frames=(-1,))) == [4]
    assert scored_frame_ids(5, ScoreConfig(frames=(4, 2, -1))) == [2, 4]
    with pytest.raises(ValueError, match="outside"):
        scored_frame_ids(5, ScoreConfig(frames=(5,)))
    with pytest.raises(ValueError, match="at least one"):
        ScoreConfig(frames=())


def test_only_the_scored_frames_are_decoded_and_the_returned_rollout_is_completed(codec, monkeypatch):
    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 5, 4, 48, 16, generator=gen)
    hist = torch.zeros(3, 2, 4, 48, 16)
    uq, sem, text = ConstantUQ(torch.tensor([50.0, 1.0, 0.0])), GrowingSemantic(), torch.ones(4) / 2
    full = judge(pred, hist, text, uq, sem, codec, ScoreConfig(frames=None))
    decoded = []
    real = objective.decode_views

    def counting(codec_, latents, views):
        decoded.append(latents.shape[0] * latents.shape[1])
        return real(codec_, latents, views)

    monkeypatch.setattr(objective, "decode_views", counting)
    last = judge(pred, hist, text, uq, sem, codec, ScoreConfig(frames=(-1,)))
    assert decoded == [3]  # one frame of each of the 3 rollouts, not 15
    torch.testing.assert_close(last.score, full.frame_scores[:, -1])
    assert torch.isnan(last.semantic[:, :-1]).all() and not torch.isnan(last.semantic[:, -1]).any()
    complete_frames(last, 1, pred[1:2], text, sem, codec, ScoreConfig(frames=(-1,)))
    assert decoded == [3, 4]  # the returned rollout's other four frames
    for name in ("semantic", "frame_scores", "centre_distance", "region_uncertainty"):
        torch.testing.assert_close(getattr(last, name)[1], getattr(full, name)[1], atol=1e-5, rtol=1e-5)
    assert torch.isnan(last.semantic[0, :-1]).all()  # rows not returned stay as scored
