"""Stages for the heads that judge rollouts: UQ head, value head, semantic dual encoder.

UQ head (``uq``): trained on the flow map's own samples. :func:`flow_rollouts` runs the bundle's flow
map (``k`` steps, the planner's count; fixed seeded noise) once over every window of a *calibration*
dataset that the world model never saw, and caches the predictions (float16) in
``<ckpt>/training/rollouts/``. Targets are the bins of ``|prediction - true future latent|`` per element;
loss is cross-entropy. The world model is frozen and its outputs are detached, so no gradient reaches it.

Value head (``value``): windows of the training dataset; per frame the discounted Monte-Carlo return
``success * gamma ** (T - 1 - t)`` on the 20 bins of [0, 1], cross-entropy. Decided, against the paper's
one-hot target: the target histogram is the return smoothed by a Gaussian of 0.75 bin widths
(HL-Gauss, Farebrother et al. 2024, "Stop Regressing"). With one-hot targets the small head
over-fitted our 270 training episodes within 1000 steps (held-out cross-entropy 2.2 -> 3.7, Kendall
tau stuck at 0.4); the smoothed target keeps neighbouring returns close and the loss is still a proper
score of the smoothed distribution. Half of every batch feeds the flow map's (no-grad) prediction of
the future instead of the true latents, with the true future's return as the label, because at planning
time the head only ever sees predicted latents.

Semantic (``semantic``): see :mod:`vidplan_server.models.semantic`. Frames every ``frame_step`` steps of
each episode, all three views, with the target's simulator mask averaged onto the 16 x 16 patch grid.
Loss: CLIP InfoNCE + 2 x the dense patch term, the term the relevance centroid depends on (weight 1 for
1500 steps reached 0.73 held-out centroid hits, weight 2 for 4000 steps 0.77; the two changes were not
measured apart).
Augmentation: a random Gaussian blur (sigma up to 1.5 px) on half the images, as the codec's decoded
frames the planner scores are blurrier than rendered ones.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from vidplan_server.data.windows import LatentWindows
from vidplan_server.evaluation.calibration import calibration_errors
from vidplan_server.models.bins import ERROR_BINS, VALUE_BINS
from vidplan_server.models.checkpoint import _write_atomic, save_module
from vidplan_server.models.flow_map import FlowMap
from vidplan_server.models.heads import UQHead, UQHeadConfig, ValueHead, ValueHeadConfig
from vidplan_server.models.semantic import SemanticConfig, SimDualEncoder, clip_loss
from vidplan_server.training.loop import Stage

EVAL_WINDOWS = 64
HL_GAUSS_SIGMA_BINS = 0.75  # value targets: Gaussian of 0.75 bin widths around the return


@torch.no_grad()
def flow_rollouts(
    flow_map: FlowMap,
    flow_file: Path,
    windows: LatentWindows,
    steps: int,
    cache_dir: Path,
    device: torch.device,
    seed: int = 0,
    batch: int = 64,
    progress: bool = True,
) -> torch.Tensor:
    """k-step flow-map predictions (N, H, C, h, w) float16 for every window, cached by model and windows."""
    h = hashlib.sha256()
    h.update(flow_file.read_bytes())
    for key in ("history", "action", "future"):
        h.update(windows.index[key].numpy().tobytes())
    h.update(windows.latents[:: max(1, len(windows.latents) // 64)].float().numpy().tobytes())
    h.update(np.array([steps, seed]).tobytes())
    path = cache_dir / f"{h.hexdigest()[:20]}.safetensors"
    if path.is_file():
        pred = load_file(str(path))["pred"]
        if len(pred) == len(windows):
            return pred
    flow_map = flow_map.to(device).eval()
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in tqdm(range(0, len(windows), batch), desc=f"rollouts k={steps}", disable=not progress, leave=False):
        idx = torch.arange(start, min(start + batch, len(windows)))
        hist, act, fut = windows.gather(idx, device)
        noise = torch.randn(fut.shape, generator=g).to(device)
        out.append(flow_map.sample(hist, act, steps=steps, noise=noise).half().cpu())
    pred = torch.cat(out)
    _write_atomic(path, lambda tmp: save_file({"pred": pred.contiguous()}, tmp))
    return pred


def top_bin_ece(logits: torch.Tensor, target: torch.Tensor, n_bins: int = 10) -> float:
    """ECE of the most likely bin's probability (equal-width confidence bins); logits (..., K), target (...)."""
    conf, idx = logits.float().softmax(-1).max(-1)
    return calibration_errors(conf.flatten(), (idx == target).flatten().float(), n_bins)[0]


class UQStage(Stage):
    name = "uq"

    def __init__(
        self,
        config: UQHeadConfig,
        train: tuple[LatentWindows, torch.Tensor],
        held_out: tuple[LatentWindows, torch.Tensor],
    ) -> None:
        self.config = config
        self.model = UQHead(config)
        self.train_set = train
        self.held_out = held_out

    @staticmethod
    def _gather(data: tuple[LatentWindows, torch.Tensor], idx: torch.Tensor, device: torch.device):
        windows, pred = data
        hist, _, fut = windows.gather(idx, device)
        p = pred[idx].to(device).float()
        return hist, p, ERROR_BINS.index((p - fut).abs())

    def batch(self, generator, batch_size, device):
        idx = torch.randint(len(self.train_set[0]), (batch_size,), generator=generator)
        return self._gather(self.train_set, idx, device)

    def loss(self, model: UQHead, batch, generator):
        hist, pred, target = batch
        logits = model(pred, hist)
        return F.cross_entropy(logits.flatten(0, -2), target.flatten()), {}

    def evaluate(self, model: UQHead, device):
        idx = self.held_out[0].spread(EVAL_WINDOWS)
        losses, eces, ents = [], [], []
        for chunk in idx.split(16):
            hist, pred, target = self._gather(self.held_out, chunk, device)
            logits = model(pred, hist)
            losses.append(F.cross_entropy(logits.flatten(0, -2), target.flatten()).item())
            eces.append(top_bin_ece(logits, target))
            ents.append(ERROR_BINS.normalized_entropy(logits).mean().item())
        return {"ce": float(np.mean(losses)), "top_bin_ece": float(np.mean(eces)), "mean_entropy": float(np.mean(ents))}

    def export(self, model, ckpt: Path, meta: dict) -> None:
        save_module(ckpt, "uq", model, self.config, meta)


class FrozenFlowMap:
    """The bundle's flow map as heads learn from it: frozen, moved to the batch's device once, sampled without
    gradients with noise from the stage's generator."""

    def __init__(self, flow_map: FlowMap, steps: int) -> None:
        self.flow_map = flow_map.eval().requires_grad_(False)
        self.steps = steps
        self._device: torch.device | None = None

    @torch.no_grad()
    def sample(self, hist: torch.Tensor, act: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """history (B, T, C, V*h, w), actions (B, H, 7) -> predicted future (B, H, C, V*h, w)."""
        if self._device != hist.device:
            self.flow_map.to(hist.device)
            self._device = hist.device
        noise = torch.randn((*act.shape[:2], *hist.shape[2:]), generator=generator).to(hist.device)
        return self.flow_map.sample(hist, act, self.steps, noise=noise)


@dataclass
class ValueData:
    windows: LatentWindows
    returns: torch.Tensor  # (N_rows,) discounted return of every latent row


class ValueStage(Stage):
    name = "value"

    def __init__(
        self,
        config: ValueHeadConfig,
        flow_map: FlowMap | None,
        flow_steps: int,
        train: ValueData,
        held_out: ValueData,
        predicted_fraction: float = 0.5,
    ) -> None:
        self.config = config
        self.model = ValueHead(config)
        self.flow = FrozenFlowMap(flow_map, flow_steps) if flow_map is not None else None
        self.train_set = train
        self.held_out = held_out
        self.predicted_fraction = predicted_fraction if flow_map is not None else 0.0

    def _inputs(self, data: ValueData, idx: torch.Tensor, device, n_pred: int, generator):
        hist, act, fut = data.windows.gather(idx, device)
        if n_pred:
            fut = torch.cat([self.flow.sample(hist[:n_pred], act[:n_pred], generator), fut[n_pred:]])
        labels = data.returns[data.windows.index["future"][idx]].to(device)
        return fut, labels

    def batch(self, generator, batch_size, device):
        idx = torch.randint(len(self.train_set.windows), (batch_size,), generator=generator)
        n_pred = int(round(batch_size * self.predicted_fraction))
        return self._inputs(self.train_set, idx, device, n_pred, generator)

    def loss(self, model: ValueHead, batch, generator):
        latents, returns = batch
        logits = model(latents)
        target = hl_gauss_target(returns, VALUE_BINS, HL_GAUSS_SIGMA_BINS * VALUE_BINS.width)
        return -(target * logits.log_softmax(-1)).sum(-1).mean(), {}

    def evaluate(self, model: ValueHead, device):
        from scipy.stats import kendalltau

        idx = self.held_out.windows.spread(4 * EVAL_WINDOWS)
        values, truth, ces = [], [], []
        for chunk in idx.split(32):
            latents, returns = self._inputs(self.held_out, chunk, device, 0, None)
            logits = model(latents)
            ces.append(F.cross_entropy(logits.flatten(0, 1), VALUE_BINS.index(returns).flatten()).item())
            values.append(VALUE_BINS.expected(logits).flatten().cpu())
            truth.append(returns.flatten().cpu())
        tau = kendalltau(torch.cat(values).numpy(), torch.cat(truth).numpy()).statistic
        return {"ce": float(np.mean(ces)), "kendall_tau": float(tau)}

    def export(self, model, ckpt: Path, meta: dict) -> None:
        save_module(ckpt, "value", model, self.config, meta)


def hl_gauss_target(values: torch.Tensor, bins, sigma: float) -> torch.Tensor:
    """(..., count) histogram of a Gaussian N(value, sigma^2) over ``bins``, renormalised to the bins' range."""
    edges = bins.edges(values.device).to(values.dtype)
    cdf = torch.special.ndtr((edges - values[..., None]) / sigma)
    mass = cdf[..., 1:] - cdf[..., :-1]
    return mass / mass.sum(-1, keepdim=True).clamp(min=1e-12)


# ---------------------------------------------------------------------------------------- semantic
@dataclass
class SemanticFrames:
    """Single views for the dual encoder: images (M, H, W, 3) uint8, masks (M, gh, gw) float target
    coverage per patch, text (M,) index into ``instructions``."""

    images: np.ndarray
    masks: np.ndarray
    text: np.ndarray
    instructions: list[str]


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur images (N, 3, H, W) with per-image sigma (N,) in pixels (sigma 0 = unchanged)."""
    r = 3
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma.clamp(min=1e-3)[:, None] ** 2))
    k = k / k.sum(1, keepdim=True)  # (N, 7)
    N, C, H, W = x.shape
    y = F.pad(x.reshape(1, N * C, H, W), (r, r, r, r), mode="replicate")
    kx = k.repeat_interleave(C, 0)[:, None, None, :]
    ky = k.repeat_interleave(C, 0)[:, None, :, None]
    y = F.conv2d(F.conv2d(y, kx, groups=N * C), ky, groups=N * C)
    return y.reshape(N, C, H, W)


class SemanticStage(Stage):
    name = "semantic"

    def __init__(
        self, config: SemanticConfig, train: SemanticFrames, held_out: SemanticFrames, dense_weight: float = 2.0
    ) -> None:
        self.config = config
        self.model = SimDualEncoder(config)
        self.train_set = train
        self.held_out = held_out
        self.dense_weight = dense_weight

    @staticmethod
    def _tensors(data: SemanticFrames, idx: np.ndarray, device):
        img = torch.from_numpy(data.images[idx]).to(device).permute(0, 3, 1, 2).float() / 255.0
        mask = torch.from_numpy(data.masks[idx]).to(device).float()
        return img, mask, data.text[idx]

    def batch(self, generator, batch_size, device):
        idx = torch.randint(len(self.train_set.images), (batch_size,), generator=generator).numpy()
        img, mask, text = self._tensors(self.train_set, idx, device)
        blur = torch.rand(batch_size, generator=generator) < 0.5
        sigma = torch.rand(batch_size, generator=generator) * 1.5 * blur
        img = torch.where(blur.to(device)[:, None, None, None], gaussian_blur(img, sigma.to(device)), img)
        gain = 1.0 + 0.15 * (torch.rand(batch_size, 1, 1, 1, generator=generator) - 0.5)
        return (img * gain.to(device)).clamp(0, 1), mask, text

    def _losses(self, model: SimDualEncoder, img, mask, text):
        instr = [self.train_set.instructions[i] for i in text]
        t_all = model.encode_text(instr)
        glob, patches = model.encode_image(img)
        same = torch.from_numpy(text[:, None] == text[None]).to(img.device)
        l_clip = clip_loss(glob, t_all, model.logit_scale, same)
        dense = model.dense_logits(patches, t_all)
        pos = mask.sum() / mask.numel()
        weight = torch.where(mask > 0, 0.5 / pos.clamp(min=1e-3), 0.5 / (1 - pos).clamp(min=1e-3))
        l_dense = F.binary_cross_entropy_with_logits(dense, mask, weight=weight)
        return l_clip, l_dense

    def loss(self, model, batch, generator):
        l_clip, l_dense = self._losses(model, *batch)
        return l_clip + self.dense_weight * l_dense, {"clip": l_clip.item(), "dense": l_dense.item()}

    def evaluate(self, model: SimDualEncoder, device):
        data = self.held_out
        idx = np.linspace(0, len(data.images) - 1, min(256, len(data.images))).astype(int)
        img, mask, text = self._tensors(data, idx, device)
        instr = [data.instructions[i] for i in text]
        scores = model.score(img, model.encode_text(instr))
        hit = centroid_hits(scores.centroid, mask)
        visible = mask.flatten(1).sum(1) > 0
        # retrieval: is the frame's own instruction the best of the held-out instructions?
        texts = model.encode_text(data.instructions)
        glob, _ = model.encode_image(img)
        own = torch.from_numpy(text).to(device)
        retrieval = ((glob @ texts.T).argmax(1) == own).float().mean().item()
        return {
            "centroid_hit_rate": float(hit[visible].float().mean()) if visible.any() else float("nan"),
            "retrieval": retrieval,
        }

    def export(self, model, ckpt: Path, meta: dict) -> None:
        save_module(ckpt, "semantic", model, self.config, meta)


def centroid_hits(centroid: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N,) bool: does the centroid (N, 2) x, y in [0, 1] fall on a masked cell of ``mask`` (N, H, W)?"""
    N, H, W = mask.shape
    x = (centroid[:, 0] * W).long().clamp(0, W - 1)
    y = (centroid[:, 1] * H).long().clamp(0, H - 1)
    return mask[torch.arange(N, device=mask.device), y, x] > 0
