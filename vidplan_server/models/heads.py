"""The heads that judge a rollout: the UQ head (error distribution per latent element) and the value head
(distribution of the discounted return per frame). Both are small U-Nets on latents (paper App. A.6:
two down- and two up-sampling blocks, self-attention over space and time in the bottleneck) and never
send gradients into the world model (they are trained on its detached outputs).

Shapes: latents ``(B, F, C, h, w)`` with ``F`` frames of ``C x h x w`` (the three views stacked along
``h``); history ``(B, T, C, h, w)``.

- :class:`UQHead` ``(pred (B, H, C, h, w), history (B, T, C, h, w)) -> logits (B, H, C, h, w, 30)`` over
  :data:`~vidplan_server.models.bins.ERROR_BINS` of ``|predicted - true|`` per latent element. History
  enters by channel concatenation, as in the world model's backbone, so every predicted frame is
  compared pixel-aligned with the frames it was predicted from.
- :class:`ValueHead` ``(latents (B, F, C, h, w)) -> logits (B, F, 20)`` over
  :data:`~vidplan_server.models.bins.VALUE_BINS`. Decided: the U-Net gives value logits at every
  position plus an attention score; each frame's logits are the attention-weighted sum over its
  positions, so the head stays spatial (the paper's "spatio-temporal" reward) and its spatial weights
  can be shown. Differentiable with respect to its input latents (the planner's refinement
  back-propagates through it).

Decided for CPU budgets: the defaults are ~0.3-0.6 M parameters with a 64-channel bottleneck instead of
the paper's 512 (``base`` presets scale up); residual blocks and attention are the world model's own
(:mod:`vidplan_server.models.video_net`), conditioned on a learned per-frame position embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vidplan_server.models.bins import ERROR_BINS, VALUE_BINS
from vidplan_server.models.checkpoint import load_config, load_weights
from vidplan_server.models.video_net import ResBlock, SpaceTimeAttention, TemporalMix, _groups


@dataclass(frozen=True)
class HeadNetConfig:
    latent_channels: int = 4
    frames: int = 5  # H: predicted frames the head sees at once
    channels: tuple[int, int, int] = (32, 48, 64)  # full, 1/2 and 1/4 resolution (two downsamplings)
    attention_heads: int = 4
    embed_dim: int = 32
    patch_size: int = 2  # space-to-depth before the U-Net (as the world model's backbone does)

    def __post_init__(self) -> None:
        if len(self.channels) != 3:
            raise ValueError(f"channels must give 3 levels (two down/up-samplings), got {self.channels}")


class LatentUNet(nn.Module):
    """Per-frame 2-level U-Net with temporal mixing, space-time attention in the bottleneck.

    ``(x (B*F, cin, h, w)) -> (B*F, cout, h, w)``; ``h`` and ``w`` must be divisible by 4 * patch_size.
    The U-Net runs on ``patch_size``-patchified latents (a 48 x 16 latent at 24 x 8): ~4x less work on CPU.
    """

    def __init__(self, cin: int, cout: int, config: HeadNetConfig) -> None:
        super().__init__()
        c0, c1, c2 = config.channels
        E, Fr = config.embed_dim, config.frames
        self.frames = Fr
        self.patch = p = config.patch_size
        cin = cin * p * p
        cout = cout * p * p
        self.frame_embed = nn.Parameter(torch.zeros(Fr, E))
        self.conv_in = nn.Conv2d(cin, c0, 3, padding=1)
        self.enc0 = ResBlock(c0, c0, E)
        self.down0 = nn.Conv2d(c0, c1, 3, stride=2, padding=1)
        self.enc1 = ResBlock(c1, c1, E)
        self.tmix1 = TemporalMix(c1, Fr)
        self.down1 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.mid1 = ResBlock(c2, c2, E)
        self.attn = SpaceTimeAttention(c2, config.attention_heads, Fr)
        self.mid2 = ResBlock(c2, c2, E)
        self.dec1 = ResBlock(c2 + c1, c1, E)
        self.dec0 = ResBlock(c1 + c0, c0, E)
        self.norm_out = nn.GroupNorm(_groups(c0), c0)
        self.conv_out = nn.Conv2d(c0, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        BF = x.shape[0]
        emb = self.frame_embed.repeat(BF // self.frames, 1)
        s0 = self.enc0(self.conv_in(F.pixel_unshuffle(x, self.patch)), emb)
        s1 = self.tmix1(self.enc1(self.down0(s0), emb))
        z = self.mid2(self.attn(self.mid1(self.down1(s1), emb)), emb)
        z = self.dec1(torch.cat([F.interpolate(z, scale_factor=2, mode="nearest"), s1], 1), emb)
        z = self.dec0(torch.cat([F.interpolate(z, scale_factor=2, mode="nearest"), s0], 1), emb)
        return F.pixel_shuffle(self.conv_out(F.silu(self.norm_out(z))), self.patch)


@dataclass(frozen=True)
class UQHeadConfig:
    net: HeadNetConfig = HeadNetConfig()
    history: int = 2  # T history frames it sees beside the prediction
    flow_steps: int = 1  # k of the flow-map samples whose errors it was trained on (the planner's k)
    bins: int = ERROR_BINS.count


class UQHead(nn.Module):
    def __init__(self, config: UQHeadConfig = UQHeadConfig()) -> None:
        super().__init__()
        self.config = config
        C = config.net.latent_channels
        self.unet = LatentUNet(C * (1 + config.history), C * config.bins, config.net)

    def forward(self, pred: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """pred (B, H, C, h, w), history (B, T, C, h, w) latents -> logits (B, H, C, h, w, bins)."""
        B, H, C, h, w = pred.shape
        if H != self.config.net.frames or history.shape[1] != self.config.history:
            raise ValueError(
                f"UQ head expects {self.config.net.frames} predicted and {self.config.history} "
                f"history frames, got {H} and {history.shape[1]}"
            )
        hist = history.reshape(B, 1, -1, h, w).expand(B, H, -1, h, w)
        x = torch.cat([pred, hist], 2).reshape(B * H, -1, h, w)
        out = self.unet(x).reshape(B, H, C, self.config.bins, h, w)
        return out.permute(0, 1, 2, 4, 5, 3)


@dataclass(frozen=True)
class ValueHeadConfig:
    net: HeadNetConfig = HeadNetConfig(channels=(24, 32, 48))
    gamma: float = 0.99  # discount per control step (15 Hz) of the Monte-Carlo return it predicts
    bins: int = VALUE_BINS.count


class ValueHead(nn.Module):
    def __init__(self, config: ValueHeadConfig = ValueHeadConfig()) -> None:
        super().__init__()
        self.config = config
        self.unet = LatentUNet(config.net.latent_channels, config.bins + 1, config.net)

    def spatial(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """latents (B, F, C, h, w) -> (per-position logits (B, F, bins, h, w), attention (B, F, h, w))."""
        B, Fr, C, h, w = latents.shape
        if Fr != self.config.net.frames:
            raise ValueError(f"value head expects {self.config.net.frames} frames, got {Fr}")
        out = self.unet(latents.reshape(B * Fr, C, h, w)).reshape(B, Fr, self.config.bins + 1, h, w)
        attn = out[:, :, -1].flatten(2).softmax(-1).reshape(B, Fr, h, w)
        return out[:, :, :-1], attn

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, F, C, h, w) -> per-frame logits (B, F, bins)."""
        logits, attn = self.spatial(latents)
        return (logits * attn[:, :, None]).sum((-2, -1))


def discounted_returns(length: int, success: bool, gamma: float) -> torch.Tensor:
    """(length,) Monte-Carlo return at every step of an episode whose only reward is ``success`` at its
    last step: ``success * gamma ** (length - 1 - t)``."""
    t = torch.arange(length, dtype=torch.float64)
    return (float(success) * gamma ** (length - 1 - t)).float()


def load_uq_head(ckpt: str | Path) -> UQHead:
    """The bundle's ``uq`` module (:class:`UQHead`), in eval mode."""
    return load_weights(ckpt, "uq", UQHead(load_config(ckpt, "uq", UQHeadConfig))).eval()


def load_value_head(ckpt: str | Path) -> ValueHead:
    """The bundle's ``value`` module (:class:`ValueHead`), in eval mode."""
    return load_weights(ckpt, "value", ValueHead(load_config(ckpt, "value", ValueHeadConfig))).eval()
