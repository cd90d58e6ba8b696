"""Codec stage: train the per-view KL autoencoder on single views of recorded frames.

Loss: L1 reconstruction in [0, 1] pixels plus ``kl_weight`` times the KL of the posterior (per latent
element). No perceptual (LPIPS) term: it needs pretrained VGG weights that cannot be downloaded here.
After training, the latent shift and scale are computed from the posterior means of training frames
and stored in the codec's config (see :mod:`vidplan_server.models.codec`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vidplan_server.data.episodes import EpisodeArrays
from vidplan_server.models.checkpoint import save_module
from vidplan_server.models.codec import Codec, CodecConfig
from vidplan_server.training.loop import Stage


@dataclass(frozen=True)
class CodecTrainConfig:
    kl_weight: float = 1e-4
    frame_step: int = 2  # use every n-th control step (neighbouring frames are near duplicates)
    eval_images: int = 96
    stats_images: int = 1024


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per item of images (N, ...) in [0, 1]."""
    mse = ((pred.clamp(0, 1) - target) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return 10.0 * torch.log10(1.0 / mse)


def _views(episodes: list[EpisodeArrays], frame_step: int) -> torch.Tensor:
    """All views of every ``frame_step``-th frame as (N, 3, H, W) uint8."""
    frames = np.concatenate([ep.frames[::frame_step] for ep in episodes])  # (N, V, H, W, 3)
    return torch.from_numpy(frames.reshape(-1, *frames.shape[2:])).permute(0, 3, 1, 2).contiguous()


class CodecStage(Stage):
    name = "codec"

    def __init__(
        self,
        config: CodecConfig,
        train_cfg: CodecTrainConfig,
        train: list[EpisodeArrays],
        held_out: list[EpisodeArrays],
    ) -> None:
        self.config = config
        self.cfg = train_cfg
        self.model = Codec(config)
        self.train_images = _views(train, train_cfg.frame_step)
        held = _views(held_out, train_cfg.frame_step)
        pick = torch.linspace(0, len(held) - 1, min(train_cfg.eval_images, len(held))).long()
        self.eval_images = held[pick]

    def batch(self, generator, batch_size, device):
        idx = torch.randint(len(self.train_images), (batch_size,), generator=generator)
        return self.train_images[idx].to(device).float() / 255.0

    def loss(self, model: Codec, images, generator):
        post = model.posterior(images)
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=generator).to(images.device)
        recon = model.decode_raw(z)
        l1 = (recon - images).abs().mean()
        kl = post.kl().mean() / post.mean[0].numel()
        return l1 + self.cfg.kl_weight * kl, {"l1": l1.item(), "kl": kl.item()}

    def evaluate(self, model: Codec, device):
        images = self.eval_images.to(device).float() / 255.0
        recon = torch.cat([model.decode_raw(model.posterior(b).mean) for b in images.split(32)])
        return {"psnr": psnr(recon.float(), images).mean().item(), "l1": (recon - images).abs().mean().item()}

    @torch.no_grad()
    def latent_normalisation(self, model: Codec) -> tuple[float, float]:
        """(shift, scale) so that training latents have zero mean and unit standard deviation."""
        device = next(model.parameters()).device
        pick = torch.linspace(0, len(self.train_images) - 1, min(self.cfg.stats_images, len(self.train_images))).long()
        batches = self.train_images[pick].split(64)
        means = torch.cat([model.posterior(b.to(device).float() / 255.0).mean.float().cpu() for b in batches])
        return means.mean().item(), 1.0 / means.std().clamp_min(1e-6).item()

    def export(self, model: nn.Module, ckpt: Path, meta: dict) -> None:
        was_training = model.training
        model.eval()
        shift, scale = self.latent_normalisation(model)
        model.train(was_training)
        config = replace(self.config, shift=shift, scale=scale)
        save_module(ckpt, "codec", model, config, {**meta, "train_cfg": self.cfg.__dict__})
