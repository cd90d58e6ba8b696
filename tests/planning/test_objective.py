"""Scoring: uncertainty always lowers a score, the relevant region's uncertainty is what counts, and the
refinement objective is differentiable with respect to the latents. The score's form is checked on every
predicted frame (``frames=None``); scoring a subset of them is tested in test_score_frames.py."""

from __future__ import annotations

import pytest
import torch

from vidplan_server.models.checkpoint import DEFAULT_CHECKPOINT
from vidplan_server.models.heads import ValueHead, ValueHeadConfig
from vidplan_server.models.semantic import SemanticBackend, SemanticScores
from vidplan_server.models.world_model import load_codec
from vidplan_server.planning.objective import ScoreConfig, judge, value_objective, weight, weighted


def test_weighting_is_decreasing_and_never_helps():
    h = torch.linspace(0, 1, 11)
    for kind in ("exp", "linear"):
        w = weight(h, ScoreConfig(weighting=kind))
        assert torch.all(w[1:] < w[:-1]) and float(w[0]) == pytest.approx(1.0)
    w = weight(h, ScoreConfig())
    for term in (0.4, -0.4):
        scores = weighted(torch.full_like(h, term), w)
        assert torch.all(scores[1:] < scores[:-1]), term  # more uncertainty, lower score, whatever the sign
    assert torch.all(weight(h, ScoreConfig(weighting="none")) == 1)


class ConstantUQ(torch.nn.Module):
    """UQ head double: per rollout, a chosen entropy level (uniform logits = entropy 1, peaked = 0)."""

    def __init__(self, sharpness: torch.Tensor, rows: slice | None = None) -> None:
        super().__init__()
        self.sharpness = sharpness  # (B,) 0 = uniform (uncertain), large = certain
        self.rows = rows

    def forward(self, pred, history):
        logits = torch.zeros(*pred.shape, 30)
        peak = self.sharpness.view(-1, 1, 1, 1, 1).expand(pred.shape).clone()
        if self.rows is not None:  # only these latent rows get the chosen level; the rest are certain
            full = torch.full_like(peak, 50.0)
            full[..., self.rows, :] = peak[..., self.rows, :]
            peak = full
        logits[..., 0] = peak
        return logits


class FixedSemantic(SemanticBackend):
    """Semantic backend double: the same frame score and a relevance blob at a fixed place for every image."""

    image_size = (64, 64)

    def __init__(self, frame: float = 0.5, where=(8, 8)):
        self.frame = frame
        self.where = where

    def encode_text(self, texts):
        return torch.ones(len(texts), 4) / 2

    def score(self, images, text):
        n = len(images)
        rel = torch.zeros(n, 16, 16)
        y, x = self.where
        rel[:, y - 1 : y + 2, x - 1 : x + 2] = 1.0
        centroid = torch.tensor([[(x + 0.5) / 16, (y + 0.5) / 16]]).expand(n, 2)
        return SemanticScores(torch.full((n,), self.frame), rel, centroid)


@pytest.fixture(scope="module")
def codec():
    return load_codec(DEFAULT_CHECKPOINT).eval()


def test_an_uncertain_rollout_scores_lower(codec):
    pred = torch.zeros(2, 5, 4, 48, 16)
    pred[1] = pred[0]  # identical rollouts ...
    hist = torch.zeros(2, 2, 4, 48, 16)
    uq = ConstantUQ(torch.tensor([50.0, 0.0]))  # ... but the UQ head is unsure about the second
    j = judge(pred, hist, torch.ones(4) / 2, uq, FixedSemantic(), codec, ScoreConfig(frames=None))
    assert torch.allclose(j.semantic[0], j.semantic[1])
    assert float(j.region_uncertainty[0].max()) < 0.01 and float(j.region_uncertainty[1].min()) > 0.99
    assert float(j.score[1]) < float(j.score[0])
    assert float(j.confidence[0].mean()) > float(j.confidence[1].mean())


def test_only_the_relevant_region_counts(codec):
    """Uncertainty outside the centre view's relevant region does not change the score."""
    pred = torch.zeros(2, 5, 4, 48, 16)
    hist = torch.zeros(2, 2, 4, 48, 16)
    sem = FixedSemantic(where=(8, 8))
    cfg = ScoreConfig(frames=None)
    unsure_elsewhere = judge(pred, hist, torch.ones(4), ConstantUQ(torch.zeros(2), rows=slice(0, 32)), sem, codec, cfg)
    unsure_there = judge(pred, hist, torch.ones(4), ConstantUQ(torch.zeros(2), rows=slice(32, 48)), sem, codec, cfg)
    certain = judge(pred, hist, torch.ones(4), ConstantUQ(torch.full((2,), 50.0)), sem, codec, cfg)
    assert torch.allclose(unsure_elsewhere.score, certain.score, atol=1e-4)
    assert torch.all(unsure_there.score < certain.score - 0.05)


def test_centring_term(codec):
    """The desired centre is where the object sits in the wrist view at a grasp, (0.5, 0.65) by default."""
    pred = torch.zeros(1, 5, 4, 48, 16)
    hist = torch.zeros(1, 2, 4, 48, 16)
    uq = ConstantUQ(torch.full((1,), 50.0))
    centred = judge(pred, hist, torch.ones(4), uq, FixedSemantic(where=(10, 8)), codec, ScoreConfig(frames=None))
    middle = judge(pred, hist, torch.ones(4), uq, FixedSemantic(where=(8, 8)), codec, ScoreConfig(frames=None))
    corner = judge(pred, hist, torch.ones(4), uq, FixedSemantic(where=(2, 2)), codec, ScoreConfig(frames=None))
    assert float(centred.centre_distance.max()) < 0.05
    assert float(corner.score[0]) < float(middle.score[0]) < float(centred.score[0])
    image_centre = judge(
        pred,
        hist,
        torch.ones(4),
        uq,
        FixedSemantic(where=(8, 8)),
        codec,
        ScoreConfig(frames=None, centre_xy=(0.5, 0.5)),
    )
    assert float(image_centre.centre_distance.max()) < 0.05


class SizedSemantic(FixedSemantic):
    """A relevance blob of a given half-size (in patches) and a given frame score."""

    def __init__(self, half: int, frame: float = 0.5):
        super().__init__(frame, where=(10, 8))
        self.half = half

    def score(self, images, text):
        out = super().score(images, text)
        rel = torch.zeros_like(out.relevance)
        y, x = self.where
        rel[:, y - self.half : y + self.half + 1, x - self.half : x + self.half + 1] = 1.0
        return SemanticScores(out.frame, rel, out.centroid)


def test_relevance_term_prefers_a_bigger_instructed_region_and_frame_term_reads_the_frame_score(codec):
    """r_s = sqrt(mean relevance): the object the words name filling more of the wrist view scores higher (the hand
    is nearer); with semantic_term "frame" the encoder's global frame score is r_s instead."""
    pred = torch.zeros(1, 5, 4, 48, 16)
    hist = torch.zeros(1, 2, 4, 48, 16)
    uq = ConstantUQ(torch.full((1,), 50.0))
    small = judge(pred, hist, torch.ones(4), uq, SizedSemantic(1), codec, ScoreConfig(frames=None))
    big = judge(pred, hist, torch.ones(4), uq, SizedSemantic(3), codec, ScoreConfig(frames=None))
    assert torch.allclose(small.semantic, torch.full((1, 5), (9 / 256) ** 0.5), atol=1e-4)
    assert torch.allclose(big.semantic, torch.full((1, 5), (49 / 256) ** 0.5), atol=1e-4)
    assert float(big.score[0]) > float(small.score[0])
    frame = ScoreConfig(semantic_term="frame", frames=None)
    low = judge(pred, hist, torch.ones(4), uq, SizedSemantic(3, frame=0.1), codec, frame)
    high = judge(pred, hist, torch.ones(4), uq, SizedSemantic(1, frame=0.6), codec, frame)
    assert torch.allclose(high.semantic, torch.full((1, 5), 0.6)) and float(high.score[0]) > float(low.score[0])
    with pytest.raises(ValueError, match="semantic_term"):
        ScoreConfig(semantic_term="vibes")


def test_value_objective_is_differentiable_and_weighted():
    torch.manual_seed(0)
    value = ValueHead(ValueHeadConfig()).eval()
    pred = torch.randn(2, 5, 4, 48, 16, requires_grad=True)
    hist = torch.zeros(2, 2, 4, 48, 16)
    J_sure, v, h = value_objective(pred, hist, ConstantUQ(torch.full((2,), 50.0)), value, ScoreConfig())
    J_sure.sum().backward()
    assert pred.grad is not None and float(pred.grad.abs().sum()) > 0
    J_unsure, v2, h2 = value_objective(pred.detach(), hist, ConstantUQ(torch.zeros(2)), value, ScoreConfig())
    assert torch.allclose(v, v2) and torch.all(h2 > h)
    assert torch.all(J_unsure < J_sure)


def test_refinement_gradient_also_flows_through_the_uq_head():
    """J's gradient with respect to the latents has a part through the UQ head (steering away from regions the
    model is unsure about), not only through the value head."""
    from vidplan_server.models.heads import UQHead, UQHeadConfig

    torch.manual_seed(0)
    value, uq = ValueHead(ValueHeadConfig()).eval(), UQHead(UQHeadConfig()).eval()
    with torch.no_grad():  # an untrained head's last layer is near zero; give it some output
        for p in uq.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hist = torch.randn(1, 2, 4, 48, 16)

    class Detached(torch.nn.Module):
        def forward(self, pred, history):
            return uq(pred, history).detach()

    grads = []
    for head in (uq, Detached()):
        pred = torch.randn(1, 5, 4, 48, 16, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
        J, _, _ = value_objective(pred, hist, head, value, ScoreConfig())
        J.sum().backward()
        grads.append(pred.grad.clone())
    assert float(grads[1].abs().max()) > 0
    # measured: the UQ path changes the gradient by ~0.85 of its size; 0.05 leaves room for other seeds
    assert float((grads[0] - grads[1]).abs().max()) > 0.05 * float(grads[1].abs().max())


class FixedProgress(torch.nn.Module):
    """Progress head double: rollout b's predicted distance is distances[b] (the batch is B * F frames, in order)."""

    def __init__(self, distances: torch.Tensor) -> None:
        super().__init__()
        self.distances = distances
        self.seen_maps: list[torch.Tensor] = []

    def forward(self, latents, target):
        self.seen_maps.append(target)
        frames = len(latents) // len(self.distances)
        return self.distances.repeat_interleave(frames)


def test_the_progress_term_ranks_rollouts_by_predicted_distance_and_uncertainty_discounts_it(codec):
    pred = torch.zeros(3, 5, 4, 48, 16)
    hist = torch.zeros(1, 2, 4, 48, 16).expand(3, -1, -1, -1, -1)  # one request's history, as the planner passes it
    certain = ConstantUQ(torch.full((3,), 50.0))
    progress = FixedProgress(torch.tensor([0.30, 0.10, 0.20]))
    j = judge(pred, hist, torch.ones(4), certain, FixedSemantic(), codec, ScoreConfig(), progress=progress)
    assert j.score.argsort(descending=True).tolist() == [1, 2, 0]  # the same frames: nearer scores higher
    assert j.score[1] - j.score[0] == pytest.approx(0.20, abs=1e-4)  # 1 per metre
    assert torch.isnan(j.progress_distance[:, :-1]).all() and j.progress_distance[:, -1].tolist() == pytest.approx(
        [0.30, 0.10, 0.20]
    )
    assert len(progress.seen_maps) == 1 and j.target_map.shape == (3, 48, 16)  # the shared history's map, once
    off = judge(
        pred, hist, torch.ones(4), certain, FixedSemantic(), codec, ScoreConfig(progress_weight=0), progress=progress
    )
    assert torch.allclose(off.score, off.score[0]) and off.progress_distance is None
    unsure = judge(
        pred, hist, torch.ones(4), ConstantUQ(torch.zeros(3)), FixedSemantic(), codec, ScoreConfig(), progress=progress
    )
    assert bool((unsure.score < j.score).all())  # the same distances, less trusted: lower


def test_progress_weight_is_checked():
    with pytest.raises(ValueError, match="progress_weight"):
        ScoreConfig(progress_weight=-1.0)
    with pytest.raises(ValueError, match="progress_weight"):
        ScoreConfig(progress_weight=float("nan"))


class FixedLocator(torch.nn.Module):
    """Locator double: the instructed object is at ``where`` (3,) for every rollout."""

    def __init__(self, where, map_source: str = "codec") -> None:
        from vidplan_server.models.progress import LocatorConfig

        super().__init__()
        self.config = LocatorConfig(map_source=map_source)
        self.where = torch.tensor(where)
        self.calls = 0

    def forward(self, latents, target):
        self.calls += 1
        return self.where.expand(len(latents), 3)


def test_with_a_locator_the_progress_term_is_the_commanded_positions_distance_to_the_located_object(codec):
    pred = torch.zeros(3, 5, 4, 48, 16)
    hist = torch.zeros(1, 2, 4, 48, 16).expand(3, -1, -1, -1, -1)
    poses = torch.zeros(3, 5, 7)
    poses[:, -1, 0] = torch.tensor([0.40, 0.55, 0.70])  # chunk ends along x; the object is at x = 0.6
    locator = FixedLocator([0.6, 0.0, 0.0])
    progress = FixedProgress(torch.tensor([0.0, 0.5, 0.5]))  # a frame-based head that disagrees is not used
    certain = ConstantUQ(torch.full((3,), 50.0))
    j = judge(pred, hist, torch.ones(4), certain, FixedSemantic(), codec, ScoreConfig(), None, progress, locator, poses)
    assert j.score.argsort(descending=True).tolist() == [1, 2, 0]
    assert j.progress_distance[:, -1].tolist() == pytest.approx([0.20, 0.05, 0.10])
    assert locator.calls == 1 and j.target_position.shape == (3, 3)  # one request's history: located once
    without_poses = judge(
        pred, hist, torch.ones(4), certain, FixedSemantic(), codec, ScoreConfig(), None, None, locator
    )
    assert without_poses.progress_distance is None  # nothing to measure from


def test_a_point_the_planner_located_replaces_the_locators_own(codec):
    pred = torch.zeros(2, 5, 4, 48, 16)
    hist = torch.zeros(1, 2, 4, 48, 16).expand(2, -1, -1, -1, -1)
    poses = torch.zeros(2, 5, 7)
    poses[:, -1, 0] = torch.tensor([0.40, 0.55])
    certain = ConstantUQ(torch.full((2,), 50.0))
    reads_frames = FixedLocator([0.0, 0.0, 0.0], map_source="frames")
    args = (pred, hist, torch.ones(4), certain, FixedSemantic(), codec, ScoreConfig(), None, None, reads_frames, poses)
    with pytest.raises(ValueError, match="request's frames"):  # it cannot locate from latents alone
        judge(*args)
    j = judge(*args, located=torch.tensor([0.6, 0.0, 0.0]))
    assert reads_frames.calls == 0 and j.progress_distance[:, -1].tolist() == pytest.approx([0.20, 0.05])
    torch.testing.assert_close(j.target_position, torch.tensor([[0.6, 0.0, 0.0]] * 2))
    # A row of NaN (the planner's while the gripper is closed): no progress term there, the other row keeps its own.
    held = judge(*args, located=torch.tensor([[0.6, 0.0, 0.0], [float("nan")] * 3]))
    assert held.progress_distance[:, -1].tolist() == pytest.approx([0.20, 0.0])
    assert bool(torch.isfinite(held.score).all()) and float(held.score[0]) < float(held.score[1])
