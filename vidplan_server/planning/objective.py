"""What the planner maximises: the uncertainty-weighted semantic score (selection) and the
uncertainty-weighted expected value (refinement). Paper Section 3.4, Algorithm 3.

Shapes: predicted latents ``(B, H, C, V*h, w)`` (the three views stacked along the height), history
``(B, T, C, V*h, w)``.

**Selection score** of a rollout: ``max_t w(h_t) * (r_s,t - lambda * d(c, c_r,t))``, where

- ``r_s,t`` is the semantic relevancy of frame t. Decided (``semantic_term`` "relevance", the default): the
  square root of the mean of the instruction's relevance map over ``centre_view`` (the wrist camera), i.e. the
  linear size of the region the words point at. Measured on the ``train`` split's simulator masks at approach
  steps: the instructed object's area in the wrist view has Spearman 0.85 with closeness of the hand to it,
  while the encoder's global frame score (the paper's CLIP frame similarity, ``semantic_term`` "frame",
  averaged over ``semantic_views``) barely changes between proposals of one step -- the planning-signal
  diagnostic (``vidplan eval planning-signal``) measured that score at chance even with the simulator as world
  model. Only the centre view is decoded for "relevance" (decoding is the scoring's main cost);
- ``c_r,t`` is the centroid of the most relevant region in ``centre_view`` and ``c`` the desired centre:
  decided (0.5, 0.65), where the target sits in the wrist view when the gripper closes on it (median of the
  ``train`` split's grasp frames, 0.51 / 0.70: the camera looks past the fingers); ``d`` is their Euclidean
  distance in image coordinates divided by the largest possible one (sqrt 2), so it lies in [0, 1]. Its weight
  ``lambda`` = 0.1 (0.05-0.25 all within 0.01 of the best within-episode Spearman on those masks; 0.5 lost 0.04);
- ``h_t`` is the uncertainty over the relevant region: the UQ head's normalised entropy, averaged over
  latent channels, then averaged over ``centre_view``'s latent grid weighted by the relevance map
  (resized to that grid);
- ``w`` is a decreasing weight in (0, 1]: ``exp(-beta h)`` (default), ``1 - h`` ("linear") or 1 ("none").

Decided (``frames``, default the last predicted frame): the max over t runs over the frames ``frames`` names, not
all H. Decoding N x H wrist frames was most of a plan's CPU time (12 x 5 frames: 0.77 s of a 1.2 s scoring, the
rollout 0.54 s, one thread), and the relevance size grows as the hand nears the object, so the chunk's end is
where it tells proposals apart. Measured with ``vidplan eval planning-signal`` (6 ``val`` episodes, 12 approach
steps, bundled checkpoint; Spearman / winner in the nearest third, target named | distractor named): all 5 frames
model -0.14 / 0.08 | -0.02 / 0.33, sim +0.07 / 0.17 | -0.07 / 0.08, sim-raw +0.40 / 0.42 | +0.14 / 0.17; last
frame model +0.00 / 0.17 | -0.20 / 0.17, sim +0.14 / 0.33 | +0.04 / 0.25, sim-raw +0.51 / 0.42 | +0.31 / 0.25;
frames 3 and 5 model +0.08 / 0.25 | -0.10 / 0.25, sim +0.16 / 0.25 | +0.09 / 0.08, sim-raw +0.59 / 0.58 |
+0.33 / 0.25 (s.e.m. about 0.15 throughout: no variant lost signal; with the simulator's frames, fewer frames
scored better). The returned rollout still reports all H frames (:func:`complete_frames` decodes its others).

**Progress term**: each scored frame's term also subtracts ``progress_weight * d_t`` (metres), before the
uncertainty weighting, so that an uncertain frame's closeness counts for less. ``d_t`` is the distance between the
hand at frame t and the object the instruction names:

- with a ``locator`` module (the bundled default, :class:`~vidplan_server.models.progress.TargetLocator`) and the
  rollouts' knots: the distance from frame t's *commanded* position (the proposal's knot) to where the locator puts
  the object, read from the current frame and the semantic encoder's map of the instruction over it (over the
  request's camera frames for the bundled locator, ``map_source`` "frames": the planner locates it once per request,
  :func:`locate_request`, and passes the point in as ``located``). Decided,
  against reading the hand off the predicted frame: the commanded position is exact, and the located point is
  shared by all proposals, so the term orders proposals without any rollout noise; the world model still weighs
  in through the uncertainty weight and the semantic terms. Measured (``vidplan eval planning-signal``, 12 policy
  samples per step): Spearman with closeness to the named object +0.64 / +0.50 on ``val`` / ``ood`` naming the
  target and +0.81 / +0.78 naming a distractor, against +0.19 / +0.11 and +0.08 / +0.11 without the term;
- else with a ``progress`` module (:class:`~vidplan_server.models.progress.ProgressHead`): its distance read off
  the predicted frame (measured +0.25 / +0.14 and +0.25 / +0.19: its 6.6 cm error is coarse next to the centimetres
  between the policy's samples);
- else none.

Why: the planning-signal diagnostic found that the relevance size alone ranks the policy's samples barely above
chance even with the simulator's frames and masks; the hand-to-object distance is what the instruction asks to
shrink. Decided ``progress_weight`` = 1 per metre: a 1 cm closer chunk end gains 0.01, several times the relevance
term's spread between proposals of one step (about 0.001-0.004), so the term decides among them.

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

import numpy as np
import torch
import torch.nn.functional as F

from vidplan_server.data.schema import CAMERA_NAMES
from vidplan_server.models.bins import ERROR_BINS, VALUE_BINS
from vidplan_server.models.codec import Codec
from vidplan_server.models.heads import UQHead, ValueHead
from vidplan_server.models.progress import ProgressHead, TargetLocator, frame_target_maps, target_maps
from vidplan_server.models.semantic import SemanticBackend

WEIGHTINGS = ("exp", "linear", "none")
SEMANTIC_TERMS = ("relevance", "frame")
DECODE_CHUNK = 32


@dataclass(frozen=True)
class ScoreConfig:
    weighting: str = "exp"  # w(h): "exp" = exp(-beta h), "linear" = 1 - h, "none" = 1
    semantic_term: str = "relevance"  # r_s: "relevance" (size of the relevant region) or "frame" (global score)
    beta: float = 3.0
    centre_weight: float = 0.1  # lambda on the centring distance
    centre_view: str = "wrist_image_left"
    centre_xy: tuple[float, float] = (0.5, 0.65)  # desired centre c, (x, y) in [0, 1] image coordinates
    semantic_views: tuple[str, ...] = ("wrist_image_left",)  # decoding is the cost: 1 view ~4x cheaper than 3
    confidence_eps: float = 0.5  # confidence = mean P(|latent error| <= eps) over the returned rollout
    # Predicted frames the selection score decodes and reads (indices into the H frames, negative from the end;
    # None: all H, the paper's max over t). Decided: the last frame (module docstring).
    frames: tuple[int, ...] | None = (-1,)
    # Weight (per metre) of the hand-to-instructed-object distance subtracted from every scored frame's term, when
    # the bundle has a locator or progress module (module docstring). 0 turns the term off.
    progress_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.semantic_term not in SEMANTIC_TERMS:
            raise ValueError(f"semantic_term must be one of {SEMANTIC_TERMS}, got {self.semantic_term!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.frames is not None and not self.frames:
            raise ValueError("frames must name at least one predicted frame (None: all)")
        if not (self.progress_weight >= 0 and math.isfinite(self.progress_weight)):
            raise ValueError(f"progress_weight must be a finite number >= 0, got {self.progress_weight}")
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
    # The progress term's hand-to-object distance (m) per frame, NaN where not scored; None without the term
    progress_distance: torch.Tensor | None = None
    target_map: torch.Tensor | None = None  # (B, V*h, w) the instruction's relevance over the current frame
    target_position: torch.Tensor | None = None  # (B, 3) m, where the locator puts the instructed object


def view_rows(latents: torch.Tensor, view: int, views: int) -> torch.Tensor:
    """The latent rows (..., C, h, w) of one view from stacked latents (..., C, V*h, w)."""
    h = latents.shape[-2] // views
    return latents[..., view * h : (view + 1) * h, :]


def decode_views(codec: Codec, latents: torch.Tensor, views: list[int]) -> torch.Tensor:
    """Decode only some views: latents (..., C, V*h, w) -> frames (..., len(views), 3, H, W) in [0, 1]."""
    V = len(codec.config.views)
    lead = latents.shape[:-3]
    z = torch.stack([view_rows(latents, v, V) for v in views], -4)  # (..., n, C, h, w)
    flat = z.reshape(-1, *z.shape[-3:]).float() / codec.config.scale + codec.config.shift
    # In chunks: one large decoder batch was several times slower per image on CPU (cache), measured.
    # channels_last: with the decoder's weights in that layout too (the planner converts them) oneDNN's
    # convolutions decoded 60 wrist frames in 126 ms instead of 208 ms on 2 CPU cores, same values to 4e-6.
    images = torch.cat(
        [codec.decode_raw(part.contiguous(memory_format=torch.channels_last)) for part in flat.split(DECODE_CHUNK)]
    ).clamp(0.0, 1.0)
    return images.reshape(*lead, len(views), *images.shape[-3:])


def uq_maps(uq: UQHead, pred: torch.Tensor, history: torch.Tensor, eps: float):
    """(normalised entropy, expected error, P(err <= eps)), each (B, H, C, V*h, w)."""
    return ERROR_BINS.summaries(uq(pred, history), eps)


@dataclass
class FrameTerms:
    """The selection score's parts for a batch of rollouts, each (B, H) unless noted."""

    score: torch.Tensor  # (B,) max over frames of the weighted terms
    terms: torch.Tensor  # weighted per-frame terms
    semantic: torch.Tensor  # r_s,t
    centre_distance: torch.Tensor  # d(c, c_r,t) in [0, 1]
    region_uncertainty: torch.Tensor  # h_t (zeros without an entropy map)
    progress: torch.Tensor | None = None  # predicted hand-to-object distance (m), when one was given


@torch.no_grad()
def score_frames(
    frames: torch.Tensor,
    view_ids: list[int],
    names: list[str],
    text: torch.Tensor,
    semantic: SemanticBackend,
    cfg: ScoreConfig,
    entropy: torch.Tensor | None = None,
    relevance: torch.Tensor | None = None,
    progress: torch.Tensor | None = None,
) -> FrameTerms:
    """The selection score of frames (B, H, n, 3, h, w) in [0, 1] showing views ``view_ids`` (indices into
    ``names``, the model's view order) for ``text`` (D,), or (B, D) one instruction per rollout; ``entropy``
    (B, H, C, V*h, w) is the UQ head's normalised entropy map
    (None: no uncertainty, h = 0). ``relevance`` (B, H, gh, gw) replaces the encoder's relevance map of the
    centre view (the diagnostic's ground-truth masks): its centroid is the mask's centre of mass, and a frame
    whose map is empty gets the largest distance, 1. ``progress`` (B, H): the hand-to-instructed-object
    distance in metres (the progress term), subtracted with weight ``cfg.progress_weight`` before the weighting."""
    B, H = frames.shape[:2]
    sem_ids = [names.index(v) for v in cfg.semantic_views]
    c_id = names.index(cfg.centre_view)
    flat = frames.flatten(0, 2)
    n = len(view_ids)
    if text.ndim == 2:  # one instruction per rollout (several robots in one batch)
        rows = text[:, None, None].expand(B, H, n, text.shape[-1]).reshape(len(flat), -1)
    else:
        rows = text.reshape(1, -1).expand(len(flat), -1)
    scores = semantic.score(flat, rows)
    frame = scores.frame.float().reshape(B, H, n)
    k = view_ids.index(c_id)
    centre = torch.tensor(cfg.centre_xy, device=frames.device)
    if relevance is None:
        centroid = scores.centroid.float().reshape(B, H, n, 2)[:, :, k]
        rel = scores.relevance.float().reshape(B, H, n, *scores.relevance.shape[-2:])[:, :, k]
        dist = (centroid - centre).norm(dim=-1) / math.sqrt(2.0)
    else:
        rel = relevance.float()
        gh, gw = rel.shape[-2:]
        ys = (torch.arange(gh, device=rel.device) + 0.5) / gh
        xs = (torch.arange(gw, device=rel.device) + 0.5) / gw
        mass = rel.sum((-2, -1))
        cx = (rel * xs).sum((-2, -1)) / mass.clamp_min(1e-6)
        cy = (rel * ys[:, None]).sum((-2, -1)) / mass.clamp_min(1e-6)
        dist = (torch.stack([cx, cy], -1) - centre).norm(dim=-1) / math.sqrt(2.0)
        dist = torch.where(mass > 0, dist, torch.ones_like(dist))
    if cfg.semantic_term == "relevance":
        r_s = rel.mean((-2, -1)).clamp_min(0).sqrt()
    else:
        r_s = frame[..., [view_ids.index(v) for v in sem_ids]].mean(-1)
    if entropy is None:
        h_region = torch.zeros_like(r_s)
    else:
        u_view = view_rows(entropy, c_id, len(names)).mean(2)  # (B, H, h, w)
        r = (
            F.interpolate(rel.flatten(0, 1)[:, None], size=u_view.shape[-2:], mode="bilinear", align_corners=False)[
                :, 0
            ]
            .reshape(u_view.shape)
            .clamp_min(0)
        )
        h_region = (r * u_view).sum((-2, -1)) / r.sum((-2, -1)).clamp_min(1e-6)
    raw = r_s - cfg.centre_weight * dist
    if progress is not None:
        raw = raw - cfg.progress_weight * progress.to(raw.dtype)
    terms = weighted(raw, weight(h_region, cfg))
    return FrameTerms(terms.max(1).values, terms, r_s, dist, h_region, progress)


def scored_view_ids(names: list[str], cfg: ScoreConfig) -> list[int]:
    """Indices of the views the score decodes, in model order: the centre view, and with ``semantic_term``
    "frame" the semantic views."""
    views = {names.index(cfg.centre_view)}
    if cfg.semantic_term == "frame":
        views |= {names.index(v) for v in cfg.semantic_views}
    return sorted(views)


def scored_frame_ids(horizon: int, cfg: ScoreConfig) -> list[int]:
    """Indices (ascending, in [0, H)) of the predicted frames the selection score decodes and reads."""
    if cfg.frames is None:
        return list(range(horizon))
    bad = [f for f in cfg.frames if not -horizon <= f < horizon]
    if bad:
        raise ValueError(f"score frames {bad} are outside the {horizon} predicted frames")
    return sorted({f % horizon for f in cfg.frames})


@torch.no_grad()
def judge(
    pred: torch.Tensor,
    history: torch.Tensor,
    text: torch.Tensor,
    uq: UQHead,
    semantic: SemanticBackend,
    codec: Codec,
    cfg: ScoreConfig,
    method_maps: tuple[torch.Tensor, torch.Tensor] | None = None,
    progress: ProgressHead | None = None,
    locator: TargetLocator | None = None,
    poses: torch.Tensor | None = None,
    located: torch.Tensor | None = None,
) -> Judgement:
    """Score a batch of rollouts. ``text`` (D,) is the instruction's embedding, or (B, D) one per rollout.
    ``method_maps``: (uncertainty, P(err <= eps)) of another ``uq_method`` (``planning/uq_methods.py``) in place of
    the bins head's entropy and confidence; the expected error stays the bins head's. The progress term
    (``cfg.progress_weight``): with the bundle's ``locator`` and the rollouts' commanded ``poses`` (B, H, 7) (the
    knots), the distance of each scored frame's commanded position to the located object -- ``located`` (3,) or
    (B, 3) m, where the planner located it for the request, or else located here from the history's current latents
    (only for a locator whose ``map_source`` is "codec"; a row of NaN: no progress term for that rollout, the planner's
    choice while the gripper is closed); else with the ``progress`` head, its distance read off the
    predicted frame; else none."""
    ent, err, ok = uq_maps(uq, pred, history, cfg.confidence_eps)
    if method_maps is not None:
        ent, ok = method_maps
    names = list(codec.config.views)
    ids = scored_view_ids(names, cfg)
    fids = scored_frame_ids(pred.shape[1], cfg)
    frames = decode_views(codec, pred[:, fids], ids)  # (B, F, n, 3, Hi, Wi)
    target = dist = None
    if cfg.progress_weight > 0 and locator is not None and poses is not None:
        if located is None:
            if locator.config.map_source != "codec":
                raise ValueError("this locator reads the maps of the request's frames: pass the located point")
            target = current_target_maps(codec, semantic, history, text)
            located = locate(locator, history, target)
        located = located.to(poses.device, torch.float32).reshape(-1, 3).expand(len(pred), 3)
        dist = (poses[:, fids, :3].float() - located[:, None]).norm(dim=-1)
        dist = dist.masked_fill(torch.isnan(located).any(-1)[:, None], 0.0)  # NaN rows: no term (the gripper holds)
    else:
        located = None
    if cfg.progress_weight > 0 and progress is not None and dist is None:
        target = current_target_maps(codec, semantic, history, text)
        dist = progress_distances(progress, pred[:, fids], target)
    t = score_frames(frames, ids, names, text, semantic, cfg, ent[:, fids], progress=dist)

    def per_frame(x: torch.Tensor) -> torch.Tensor:  # (B, F) -> (B, H), NaN where a frame was not scored
        out = torch.full(pred.shape[:2], float("nan"), dtype=x.dtype, device=x.device)
        out[:, fids] = x
        return out

    return Judgement(
        score=t.score,
        frame_scores=per_frame(t.terms),
        semantic=per_frame(t.semantic),
        centre_distance=per_frame(t.centre_distance),
        region_uncertainty=per_frame(t.region_uncertainty),
        uncertainty=ent.mean((2, 3, 4)),
        expected_error=err.mean((2, 3, 4)),
        confidence=ok.mean((2, 3, 4)),
        entropy_map=ent,
        progress_distance=per_frame(dist) if dist is not None else None,
        target_map=target,
        target_position=located,
    )


def locate_request(
    locator: TargetLocator,
    codec: Codec,
    semantic: SemanticBackend,
    history: torch.Tensor,
    text: torch.Tensor,
    frames: np.ndarray | None = None,
) -> torch.Tensor:
    """Where ``locator`` puts the instructed object for one request, (3,) m: from the current latents of history
    (1, T, C, V*h, w) and the map of ``text`` (D,) over the request's current ``frames`` (V, H, W, 3) uint8 (a locator
    whose ``map_source`` is "frames", which needs them) or over the codec's round trip of those latents ("codec")."""
    if locator.config.map_source == "frames":
        if frames is None:
            raise ValueError("this locator reads the maps of the request's current frames: pass them")
        target = frame_target_maps(semantic, np.asarray(frames)[None], text, tuple(history.shape[-2:]))
    else:
        target = current_target_maps(codec, semantic, history[:1], text)
    return locate(locator, history[:1], target)[0]


def locate(locator: TargetLocator, history: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The instructed object's position (B, 3) in metres from each rollout's current frame (history (B, T, ...)) and
    target map (B, V*h, w); computed once when the rows share one history."""
    current = history[:, -1].float()
    if len(current) > 1 and history.stride(0) == 0 and target.stride(0) == 0:
        return locator(current[:1], target[:1].float()).expand(len(current), 3)
    return locator(current, target.float())


def current_target_maps(
    codec: Codec, semantic: SemanticBackend, history: torch.Tensor, text: torch.Tensor
) -> torch.Tensor:
    """The instruction's relevance over the current frame of each rollout, (B, V*h, w), from history
    (B, T, C, V*h, w); computed once when the rows share one history (the planner expands one request's)."""
    current = history[:, -1]
    if len(current) > 1 and history.stride(0) == 0 and (text.ndim == 1 or text.stride(0) == 0 or len(text) == 1):
        return target_maps(codec, semantic, current[:1], text.reshape(-1, text.shape[-1])[:1]).expand(
            len(current), -1, -1
        )
    return target_maps(codec, semantic, current, text)


def progress_distances(progress: ProgressHead, latents: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Predicted hand-to-object distance (B, F) in metres of frames latents (B, F, C, V*h, w), target (B, V*h, w)."""
    B, F_ = latents.shape[:2]
    d = progress(latents.flatten(0, 1).float(), target.float().repeat_interleave(F_, 0))
    return d.reshape(B, F_)


@torch.no_grad()
def complete_frames(
    judged: Judgement,
    row: int,
    pred: torch.Tensor,
    text: torch.Tensor,
    semantic: SemanticBackend,
    codec: Codec,
    cfg: ScoreConfig,
    progress: ProgressHead | None = None,
    poses: torch.Tensor | None = None,
) -> None:
    """Fill in, in place, the per-frame terms of rollout ``row`` (pred (1, H, C, V*h, w)) for the frames the
    selection did not score (NaN), so that the returned rollout reports all H frames; only its missing frames are
    decoded."""
    missing = [t for t in range(pred.shape[1]) if torch.isnan(judged.semantic[row, t])]
    if not missing:
        return
    names = list(codec.config.views)
    ids = scored_view_ids(names, cfg)
    frames = decode_views(codec, pred[:, missing], ids)
    dist = None
    if judged.target_position is not None and poses is not None:
        dist = (poses[:, missing, :3].float() - judged.target_position[row : row + 1, None]).norm(dim=-1)
    elif judged.target_position is None and progress is not None and judged.target_map is not None:
        dist = progress_distances(progress, pred[:, missing], judged.target_map[row : row + 1])
    if dist is not None:
        judged.progress_distance[row, missing] = dist[0].to(judged.progress_distance.dtype)
    t = score_frames(frames, ids, names, text, semantic, cfg, judged.entropy_map[row : row + 1, missing], progress=dist)
    for name, value in (
        ("frame_scores", t.terms),
        ("semantic", t.semantic),
        ("centre_distance", t.centre_distance),
        ("region_uncertainty", t.region_uncertainty),
    ):
        getattr(judged, name)[row, missing] = value[0].to(getattr(judged, name).dtype)


def value_objective(
    pred: torch.Tensor, history: torch.Tensor, uq: UQHead, value: ValueHead, cfg: ScoreConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Refinement objective J (B,) with the per-frame expected value (B, H) and uncertainty (B, H); differentiable."""
    logits, attn = value.spatial(pred)  # (B, H, bins, h, w), (B, H, h, w)
    v = VALUE_BINS.expected((logits * attn[:, :, None]).sum((-2, -1)))
    ent = ERROR_BINS.normalized_entropy(uq(pred, history)).mean(2)  # (B, H, V*h, w)
    if ent.shape[-2:] != attn.shape[-2:]:
        attn = F.interpolate(attn.flatten(0, 1)[:, None], size=ent.shape[-2:], mode="bilinear", align_corners=False)[
            :, 0
        ].reshape(ent.shape)
        attn = attn / attn.sum((-2, -1), keepdim=True)
    h = (attn * ent).sum((-2, -1))
    return (weight(h, cfg) * v).mean(1), v, h
