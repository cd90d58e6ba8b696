"""What the planner maximises: the uncertainty-weighted semantic score (selection) and the
uncertainty-weighted expected value (refinement). Paper Section 3.4, Algorithm 3.

Shapes: predicted latents ``(B, H, C, V*h, w)`` (the three views stacked along the height), history
``(B, T, C, V*h, w)``.

**Selection score** of a rollout: ``max_t w(h_t) * (r_s,t - lambda * d(c, c_r,t))``, where

- ``r_s,t`` is the semantic frame score (cosine similarity in [-1, 1]) averaged over ``semantic_views``
  (decided: the wrist view only by default -- the semantic reward needs decoded frames, and decoding all
  three views of 12 proposals x 5 frames took ~0.6-1.5 s on 2 CPU cores against ~0.2 s for one view);
- ``c_r,t`` is the centroid of the most relevant region in ``centre_view`` (the wrist camera by default)
  and ``c`` the desired centre (that view's centre by default); ``d`` is their Euclidean distance in
  image coordinates divided by the largest possible one (sqrt 2), so it lies in [0, 1];
- ``h_t`` is the uncertainty over the relevant region: the UQ head's normalised entropy, averaged over
  latent channels, then averaged over ``centre_view``'s latent grid weighted by the relevance map
  (resized to that grid);
- ``w`` is a decreasing weight in (0, 1]: ``exp(-beta h)`` (default), ``1 - h`` ("linear") or 1 ("none").

Decided, because the paper multiplies a weight into a reward that can be negative: a negative term is
scaled by ``2 - w`` instead of ``w`` (``term - (1 - w) |term|``), so that uncertainty
always *lowers* a score, whatever its sign; otherwise an uncertain rollout with a bad score would be
pulled towards zero and beat a certain one.

**Refinement objective**: ``J = mean_t w(hbar_t) * E[V_t]``, with ``E[V_t]`` the value head's expected
discounted return of frame t (in [0, 1], so the sign issue above does not arise) and ``hbar_t`` the
normalised entropy averaged over channels and weighted by the value head's own spatial attention (the
uncertainty where the value head looks). ``J`` is differentiable with respect to the latents, through the
value head *and* the UQ head, so the gradient both raises the value and avoids regions the model is unsure
about.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vidplan_server.data.schema import CAMERA_NAMES
from vidplan_server.models.bins import ERROR_BINS, VALUE_BINS
from vidplan_server.models.codec import Codec
from vidplan_server.models.heads import UQHead, ValueHead
from vidplan_server.models.semantic import SemanticBackend

WEIGHTINGS = ("exp", "linear", "none")
DECODE_CHUNK = 32


@dataclass(frozen=True)
class ScoreConfig:
    weighting: str = "exp"  # w(h): "exp" = exp(-beta h), "linear" = 1 - h, "none" = 1
    beta: float = 3.0
    centre_weight: float = 0.5  # lambda on the centring distance
    centre_view: str = "wrist_image_left"
    centre_xy: tuple[float, float] = (0.5, 0.5)  # desired centre c, (x, y) in [0, 1] image coordinates
    semantic_views: tuple[str, ...] = ("wrist_image_left",)  # decoding is the cost: 1 view ~4x cheaper than 3
    confidence_eps: float = 0.5  # confidence = mean P(|latent error| <= eps) over the returned rollout

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        unknown = [v for v in (self.centre_view, *self.semantic_views) if v not in CAMERA_NAMES]
        if unknown or not self.semantic_views:
            raise ValueError(f"views must be among {CAMERA_NAMES}, got {unknown or 'none'}")


def weight(h: torch.Tensor, cfg: ScoreConfig) -> torch.Tensor:
    """Uncertainty (any shape) in [0, 1] -> weight in (0, 1], decreasing."""
    if cfg.weighting == "exp":
        return torch.exp(-cfg.beta * h)
    if cfg.weighting == "linear":
        return (1.0 - h).clamp(1e-3, 1.0)
    return torch.ones_like(h)


def weighted(term: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``w * term`` for a non-negative term, ``(2 - w) * term`` for a negative one: never raised by uncertainty."""
    return torch.where(term >= 0, w * term, (2.0 - w) * term)


@dataclass
class Judgement:
    """Everything the planner reports about a batch of rollouts. (B, H) unless noted."""

    score: torch.Tensor  # (B,) selection score
    frame_scores: torch.Tensor  # weighted per-frame terms
    semantic: torch.Tensor  # r_s,t
    centre_distance: torch.Tensor  # d(c, c_r,t) in [0, 1]
    region_uncertainty: torch.Tensor  # h_t
    uncertainty: torch.Tensor  # mean normalised entropy of the frame
    expected_error: torch.Tensor  # mean expected |latent error| of the frame
    confidence: torch.Tensor  # mean P(|err| <= eps) of the frame
    entropy_map: torch.Tensor  # (B, H, C, V*h, w) normalised entropy per latent element


def view_rows(latents: torch.Tensor, view: int, views: int) -> torch.Tensor:
    """The latent rows (..., C, h, w) of one view from stacked latents (..., C, V*h, w)."""
    h = latents.shape[-2] // views
    return latents[..., view * h:(view + 1) * h, :]


def decode_views(codec: Codec, latents: torch.Tensor, views: list[int]) -> torch.Tensor:
    """Decode only some views: latents (..., C, V*h, w) -> frames (..., len(views), 3, H, W) in [0, 1]."""
    V = len(codec.config.views)
    lead = latents.shape[:-3]
    z = torch.stack([view_rows(latents, v, V) for v in views], -4)  # (..., n, C, h, w)
    flat = z.reshape(-1, *z.shape[-3:]).float() / codec.config.scale + codec.config.shift
    # In chunks: one large decoder batch was several times slower per image on CPU (cache), measured.
    # channels_last: with the decoder's weights in that layout too (the planner converts them) oneDNN's
    # convolutions decoded 60 wrist frames in 126 ms instead of 208 ms on 2 CPU cores, same values to 4e-6.
    images = torch.cat([codec.decode_raw(part.contiguous(memory_format=torch.channels_last))
                        for part in flat.split(DECODE_CHUNK)]).clamp(0.0, 1.0)
    return images.reshape(*lead, len(views), *images.shape[-3:])


def uq_maps(uq: UQHead, pred: torch.Tensor, history: torch.Tensor, eps: float):
    """(normalised entropy, expected error, P(err <= eps)), each (B, H, C, V*h, w)."""
    return ERROR_BINS.summaries(uq(pred, history), eps)


@torch.no_grad()
def judge(pred: torch.Tensor, history: torch.Tensor, text: torch.Tensor, uq: UQHead, semantic: SemanticBackend,
          codec: Codec, cfg: ScoreConfig) -> Judgement:
    """Score a batch of rollouts. ``text`` (D,) is the instruction's embedding."""
    B, H = pred.shape[:2]
    ent, err, ok = uq_maps(uq, pred, history, cfg.confidence_eps)
    names = list(codec.config.views)
    sem_ids = [names.index(v) for v in cfg.semantic_views]
    c_id = names.index(cfg.centre_view)
    ids = sorted(set(sem_ids) | {c_id})
    frames = decode_views(codec, pred, ids)  # (B, H, n, 3, Hi, Wi)
    flat = frames.flatten(0, 2)
    scores = semantic.score(flat, text.reshape(1, -1).expand(len(flat), -1))
    frame = scores.frame.float().reshape(B, H, len(ids))
    r_s = frame[..., [ids.index(v) for v in sem_ids]].mean(-1)
    k = ids.index(c_id)
    centroid = scores.centroid.float().reshape(B, H, len(ids), 2)[:, :, k]
    relevance = scores.relevance.float().reshape(B, H, len(ids), *scores.relevance.shape[-2:])[:, :, k]
    centre = torch.tensor(cfg.centre_xy, device=centroid.device)
    dist = (centroid - centre).norm(dim=-1) / math.sqrt(2.0)
    u_view = view_rows(ent, c_id, len(names)).mean(2)  # (B, H, h, w)
    rel = F.interpolate(relevance.flatten(0, 1)[:, None], size=u_view.shape[-2:], mode="bilinear",
                        align_corners=False)[:, 0].reshape(u_view.shape).clamp_min(0)
    h_region = (rel * u_view).sum((-2, -1)) / rel.sum((-2, -1)).clamp_min(1e-6)
    terms = weighted(r_s - cfg.centre_weight * dist, weight(h_region, cfg))
    return Judgement(
        score=terms.max(1).values, frame_scores=terms, semantic=r_s, centre_distance=dist,
        region_uncertainty=h_region, uncertainty=ent.mean((2, 3, 4)), expected_error=err.mean((2, 3, 4)),
        confidence=ok.mean((2, 3, 4)), entropy_map=ent,
    )


def value_objective(pred: torch.Tensor, history: torch.Tensor, uq: UQHead, value: ValueHead,
                    cfg: ScoreConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Refinement objective J (B,) with the per-frame expected value (B, H) and uncertainty (B, H); differentiable."""
    logits, attn = value.spatial(pred)  # (B, H, bins, h, w), (B, H, h, w)
    v = VALUE_BINS.expected((logits * attn[:, :, None]).sum((-2, -1)))
    ent = ERROR_BINS.normalized_entropy(uq(pred, history)).mean(2)  # (B, H, V*h, w)
    if ent.shape[-2:] != attn.shape[-2:]:
        attn = F.interpolate(attn.flatten(0, 1)[:, None], size=ent.shape[-2:], mode="bilinear",
                             align_corners=False)[:, 0].reshape(ent.shape)
        attn = attn / attn.sum((-2, -1), keepdim=True)
    h = (attn * ent).sum((-2, -1))
    return (weight(h, cfg) * v).mean(1), v, h
