"""The default world-model backbone: a compact factorised space-time U-Net for CPU-sized training.

Interface (shared by any backbone): ``net(x, history, actions, c_noise, cond=None) -> F`` with

    x        (B, H, C, h, w)  preconditioned noisy future latents (EDM c_in * x)
    history  (B, T, C, h, w)  clean history latents, oldest first, the current frame last
    actions  (B, H, A)        normalised action per predicted frame
    c_noise  (B,)             EDM noise conditioning, ln(sigma) / 4
    cond     (B, E) or None   extra conditioning added to every frame's embedding (the flow map's
                              end-time embedding)
    F        (B, H, C, h, w)  raw network output, before EDM's c_skip / c_out

Design (decided here; the paper's backbone is SVD, far too slow for 2 CPU cores):
- History enters by channel concatenation: every future frame sees all T history latents stacked on its
  own channels. That conditions each predicted frame pixel-aligned on the current frame (most of a
  frame is static) and keeps the convolutional work at H frames instead of T + H.
- Per-frame conditioning: an embedding of c_noise (Fourier features, shared by all frames), of the
  frame's action, and a learned frame-position embedding, applied by adaptive GroupNorm (scale/shift) in
  every residual block. With ``action_deltas`` the action embedding also reads the frame's motion, its
  action minus the previous frame's (x ``DELTA_GAIN``; the first frame repeats the second's, assuming a
  steady speed, since the pose at the current frame is not an input): the absolute pose alone says where the
  hand should be, not how far it moves from the frame before, which is what changes the picture. Measured:
  without it, the bundled model and a fine-tune on half branch windows ignored the actions (action gain
  0.000 after 1000 steps).
- Spatial action maps (``action_maps`` = k > 0): the embedding above can only scale and shift whole channels,
  so turning "the hand goes to (x, y, z)" into "the arm appears at these pixels" must be built from global
  modulations. The maps give the convolutions that relation directly: a per-position MLP (1x1 convolutions)
  of the frame's action features and Fourier features of the position (y over the stacked views, x) gives k
  channels per frame at the patchified resolution, concatenated to the input. The cameras are fixed up to a
  few cm (DESIGN: DROID's rig), so a learned map from pose to position can be shared by all episodes.
- Space: 2x2 patchify (space-to-depth; a 48 x 16 latent is processed at 24 x 8, which cut a training
  step ~4x on CPU against full resolution), then 3x3 convolutions per frame at three resolutions
  (strided-conv down, nearest up, skip connections). Time: after every residual block, a residual
  1-D convolution over the H frames at every spatial position. Attention only at the lowest
  resolution, jointly over space and time (H * h/16 * w/16 tokens with patchify; 60 for the default
  5 x 48 x 16 latents).
The output convolution is zero-initialised, so an untrained denoiser starts as EDM's c_skip * x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Per-frame motion in normalised action units is ~0.2 at the expert's speed (one frame = 3 control steps);
# scaled to order 1 like the absolute actions.
DELTA_GAIN = 5.0


@dataclass(frozen=True)
class VideoNetConfig:
    latent_channels: int = 4
    history: int = 2  # T
    horizon: int = 5  # H
    action_dim: int = 7
    channels: tuple[int, ...] = (64, 96, 128)  # per resolution level
    blocks_per_level: int = 1
    attention_heads: int = 4
    embed_dim: int = 128
    fourier_features: int = 32
    patch_size: int = 2  # space-to-depth before the first level (DiT-style patchify)
    action_deltas: bool = False  # also embed each frame's action minus the previous frame's (see the docstring)
    action_maps: int = 0  # channels of the spatial action maps (0: none; see the docstring)
    position_frequencies: int = 4  # Fourier frequencies per axis of the action maps' position features

    def __post_init__(self) -> None:
        if not 1 <= self.history <= 6:
            raise ValueError(f"history must be 1..6 frames, got {self.history}")
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")


class FourierEmbedding(nn.Module):
    """Scalar (B,) -> (B, 2 * n) sin/cos features at ``n`` log-spaced frequencies (cycles per unit).

    Defaults suit c_noise = ln(sigma) / 4, which spans about [-1.6, 1.1] for sigma in [0.002, 80]: the
    fastest feature makes one turn per unit, the slowest is nearly linear (EDM's positional embedding
    of c_noise is similarly smooth).
    """

    def __init__(self, n: int, min_freq: float = 0.02, max_freq: float = 1.0) -> None:
        super().__init__()
        freqs = torch.exp(torch.linspace(math.log(min_freq), math.log(max_freq), n))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arg = x.float()[:, None] * self.freqs[None] * 2 * math.pi
        return torch.cat([arg.sin(), arg.cos()], dim=1)


def _groups(ch: int) -> int:
    for g in (8, 4, 2, 1):
        if ch % g == 0:
            return g
    return 1


class ResBlock(nn.Module):
    """Per-frame residual conv block with adaptive GroupNorm from the frame embedding."""

    def __init__(self, cin: int, cout: int, emb: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.affine = nn.Linear(emb, 2 * cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.affine(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.conv2(F.silu(self.norm2(h) * (1 + scale) + shift))
        return self.skip(x) + h


class TemporalMix(nn.Module):
    """Residual 1-D convolution over the H frames at every spatial position."""

    def __init__(self, ch: int, frames: int) -> None:
        super().__init__()
        self.frames = frames
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.conv = nn.Conv1d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        BH, C, h, w = x.shape
        B = BH // self.frames
        y = F.silu(self.norm(x)).reshape(B, self.frames, C, h * w).permute(0, 3, 2, 1).reshape(B * h * w, C, -1)
        y = self.conv(y).reshape(B, h * w, C, self.frames).permute(0, 3, 2, 1).reshape(BH, C, h, w)
        return x + y


class SpaceTimeAttention(nn.Module):
    """Self-attention over all H * h * w positions of a clip (lowest resolution only)."""

    def __init__(self, ch: int, heads: int, frames: int) -> None:
        super().__init__()
        self.frames = frames
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.attn = nn.MultiheadAttention(ch, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        BH, C, h, w = x.shape
        B = BH // self.frames
        tokens = self.norm(x).reshape(B, self.frames, C, h * w).permute(0, 1, 3, 2).reshape(B, -1, C)
        y, _ = self.attn(tokens, tokens, tokens, need_weights=False)
        y = y.reshape(B, self.frames, h * w, C).permute(0, 1, 3, 2).reshape(BH, C, h, w)
        return x + y


def position_features(h: int, w: int, frequencies: int) -> torch.Tensor:
    """(4 * frequencies, h, w): sin/cos of pi * 2^j * y and x for j < frequencies, with y, x in [-1, 1]."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    f = math.pi * 2.0 ** torch.arange(frequencies, dtype=torch.float32)
    arg = torch.cat([ys[None] * f[:, None, None], xs[None] * f[:, None, None]])
    return torch.cat([arg.sin(), arg.cos()])


class ActionMaps(nn.Module):
    """Per-frame action features (N, A) -> k spatial maps (N, k, h, w) at the given resolution."""

    def __init__(self, action_features: int, maps: int, frequencies: int, hidden: int = 64) -> None:
        super().__init__()
        self.frequencies = frequencies
        self.mlp = nn.Sequential(
            nn.Conv2d(action_features + 4 * frequencies, hidden, 1),
            nn.SiLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.SiLU(),
            nn.Conv2d(hidden, maps, 1),
        )

    def forward(self, features: torch.Tensor, h: int, w: int) -> torch.Tensor:
        pos = position_features(h, w, self.frequencies).to(features.device, features.dtype)
        N = features.shape[0]
        z = torch.cat([features[:, :, None, None].expand(N, -1, h, w), pos[None].expand(N, -1, h, w)], 1)
        return self.mlp(z)


class VideoNet(nn.Module):
    def __init__(self, config: VideoNetConfig = VideoNetConfig()) -> None:
        super().__init__()
        self.config = c = config
        E, H = c.embed_dim, c.horizon
        self.noise_embed = nn.Sequential(
            FourierEmbedding(c.fourier_features), nn.Linear(2 * c.fourier_features, E), nn.SiLU(), nn.Linear(E, E)
        )
        a_in = c.action_dim * (2 if c.action_deltas else 1)
        self.action_embed = nn.Sequential(nn.Linear(a_in, E), nn.SiLU(), nn.Linear(E, E))
        self.frame_embed = nn.Parameter(torch.zeros(H, E))
        p2 = c.patch_size**2
        self.action_maps = ActionMaps(a_in, c.action_maps, c.position_frequencies) if c.action_maps else None
        self.conv_in = nn.Conv2d(c.latent_channels * (1 + c.history) * p2 + c.action_maps, c.channels[0], 3, padding=1)

        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips = []
        ch = c.channels[0]
        for level, cout in enumerate(c.channels):
            blocks = nn.ModuleList()
            for _ in range(c.blocks_per_level):
                blocks.append(nn.ModuleList([ResBlock(ch, cout, E), TemporalMix(cout, H)]))
                ch = cout
                skips.append(ch)
            self.down.append(blocks)
            last = level == len(c.channels) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.mid1 = ResBlock(ch, ch, E)
        self.mid_attn = SpaceTimeAttention(ch, c.attention_heads, H)
        self.mid2 = ResBlock(ch, ch, E)

        self.up = nn.ModuleList()
        for cout in reversed(c.channels):
            blocks = nn.ModuleList()
            for _ in range(c.blocks_per_level):
                blocks.append(nn.ModuleList([ResBlock(ch + skips.pop(), cout, E), TemporalMix(cout, H)]))
                ch = cout
            self.up.append(blocks)
        self.norm_out = nn.GroupNorm(_groups(ch), ch)
        self.conv_out = nn.Conv2d(ch, c.latent_channels * p2, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def action_features(self, actions: torch.Tensor) -> torch.Tensor:
        """(B, H, A) normalised actions -> the action embedding's input: (B, H, A), or (B, H, 2A) with the
        per-frame motion appended when ``action_deltas``."""
        if not self.config.action_deltas:
            return actions
        if actions.shape[1] < 2:
            return torch.cat([actions, torch.zeros_like(actions)], -1)
        d = actions[:, 1:] - actions[:, :-1]
        return torch.cat([actions, DELTA_GAIN * torch.cat([d[:, :1], d], 1)], -1)

    def forward(self, x, history, actions, c_noise, cond=None):
        B, H, C, h, w = x.shape
        if H != self.config.horizon or history.shape[1] != self.config.history:
            raise ValueError(
                f"expected {self.config.horizon} future and {self.config.history} history frames, "
                f"got {H} and {history.shape[1]}"
            )
        features = self.action_features(actions)
        emb = self.noise_embed(c_noise)[:, None] + self.action_embed(features) + self.frame_embed[None]
        if cond is not None:
            emb = emb + cond[:, None]
        emb = emb.reshape(B * H, -1)
        hist = history.reshape(B, 1, -1, h, w).expand(B, H, -1, h, w)
        z = torch.cat([x, hist], dim=2).reshape(B * H, -1, h, w)
        z = F.pixel_unshuffle(z, self.config.patch_size)
        if self.action_maps is not None:
            z = torch.cat([z, self.action_maps(features.reshape(B * H, -1), *z.shape[-2:])], 1)
        z = self.conv_in(z)

        skips = []
        for blocks, down in zip(self.down, self.downsample, strict=True):
            for res, temporal in blocks:
                z = temporal(res(z, emb))
                skips.append(z)
            z = down(z)
        z = self.mid2(self.mid_attn(self.mid1(z, emb)), emb)
        for i, blocks in enumerate(self.up):
            if i:
                z = F.interpolate(z, scale_factor=2, mode="nearest")
            for res, temporal in blocks:
                z = temporal(res(torch.cat([z, skips.pop()], dim=1), emb))
        out = F.pixel_shuffle(self.conv_out(F.silu(self.norm_out(z))), self.config.patch_size)
        return out.reshape(B, H, C, h, w)
