"""Uncertainty heatmaps for operators: the paper's latent colour map and a direct per-pixel map.

Latent colour map (paper App. A.6): solid red, green and blue frames are turned once into latents
``z_r, z_g, z_b``; a heatmap latent blends them per latent element by the uncertainty ``u`` in [0, 1]
(0 -> blue, 0.5 -> green, 1 -> red, piecewise linear in between) and is decoded by the codec. Because the
blend is per element and channel, the decoded colour follows where the head is unsure, at the codec's
resolution. Per-pixel map: the channel-mean uncertainty of each view, upsampled (bilinear) to the view's
pixels and put through an OpenCV colour map (JET: blue = certain, red = uncertain), for comparison.
Both are overlaid on the predicted RGB frames with ``cv2.addWeighted``.

Decided: the paper encodes the solid frames with SVD's VAE. Our small codec never saw saturated solid
frames and encodes solid blue to a latent that decodes grey (measured: mean RGB 105/105/99), so the
bundled basis is found by decoder inversion instead: starting from the encoded latents, Adam on
``|decode(z) - solid|^2`` (:func:`fit_colormap`, run by ``vidplan train uq`` and stored in the bundle as
module ``colormap``). The small decoder still cannot reach fully saturated colours, but the hues are
right (blue end decodes bluish, red end reddish; tested). Without a stored basis (e.g. a user's SVD VAE)
the paper's encoding is used.

Shapes: uncertainty ``(..., C, V*h, w)`` (as latents: the views stacked along ``h``), frames
``(..., V, H, W, 3)`` uint8; outputs are per view ``(..., V, H, W, 3)`` uint8.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from vidplan_server.models.checkpoint import load_config, load_weights, read_manifest
from vidplan_server.models.codec import Codec

SOLID = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}
ORDER = ("blue", "green", "red")  # uncertainty 0, 0.5, 1


def solid_frames(codec: Codec) -> torch.Tensor:
    """(3, V, 3, H, W) solid blue, green and red frames for every view of ``codec``."""
    H, W = codec.config.image_size
    V = len(codec.config.views)
    device = next(codec.parameters()).device
    return torch.stack([torch.tensor(SOLID[c], device=device).view(1, 3, 1, 1).expand(V, 3, H, W) for c in ORDER])


@dataclass(frozen=True)
class ColormapConfig:
    method: str = "decoder_inversion"  # or "encode" (the paper's)
    steps: int = 0
    final_mse: float = 0.0


class ColormapBasis(nn.Module):
    """The three basis latents (3, C, V*h, w) as a module, so the bundle stores them like any weights."""

    def __init__(self, basis: torch.Tensor, config: ColormapConfig = ColormapConfig()) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("basis", basis.detach().clone())


def encode_colormap(codec: Codec) -> ColormapBasis:
    with torch.no_grad():
        return ColormapBasis(codec.encode(solid_frames(codec)), ColormapConfig("encode", 0, 0.0))


def fit_colormap(codec: Codec, steps: int = 100, lr: float = 0.1) -> ColormapBasis:
    """Decoder inversion: latents that decode as close as the codec can to solid blue, green and red."""
    target = solid_frames(codec)
    with torch.no_grad():
        z = codec.encode(target)
    z.requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    frozen = [p.requires_grad for p in codec.parameters()]
    codec.requires_grad_(False)
    try:
        for _ in range(steps):
            loss = ((codec.decode(z) - target) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        for p, g in zip(codec.parameters(), frozen, strict=True):
            p.requires_grad_(g)
    return ColormapBasis(z.detach(), ColormapConfig("decoder_inversion", steps, round(float(loss.detach()), 5)))


class LatentColormap:
    def __init__(self, codec: Codec, basis: ColormapBasis | None = None) -> None:
        self.codec = codec
        self.basis = (basis or encode_colormap(codec)).basis  # (3, C, V*h, w): blue, green, red

    def blend(self, u: torch.Tensor) -> torch.Tensor:
        """Uncertainty (..., C, V*h, w) in [0, 1] -> heatmap latents of the same shape."""
        u = u.clamp(0.0, 1.0).to(self.basis.device)
        blue, green, red = self.basis
        lower = torch.lerp(blue, green, 2 * u)  # u in [0, 0.5]
        upper = torch.lerp(green, red, 2 * u - 1)  # u in [0.5, 1]
        return torch.where(u < 0.5, lower, upper)

    @torch.no_grad()
    def render(self, u: torch.Tensor) -> np.ndarray:
        """Uncertainty (..., C, V*h, w) -> decoded heatmaps (..., V, H, W, 3) uint8 RGB."""
        rgb = self.codec.decode(self.blend(u)).clamp(0, 1)  # (..., V, 3, H, W)
        return (rgb.movedim(-3, -1) * 255).round().byte().cpu().numpy()


def pixel_heatmap(u: torch.Tensor, views: int, size: tuple[int, int], colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """Uncertainty (..., C, V*h, w) -> per-pixel colour maps (..., V, H, W, 3) uint8 RGB at ``size`` (H, W)."""
    m = u.float().mean(-3)  # (..., V*h, w)
    lead = m.shape[:-2]
    m = m.reshape(*lead, views, m.shape[-2] // views, m.shape[-1]).clamp(0, 1).cpu().numpy()
    flat = m.reshape(-1, *m.shape[-2:])
    out = np.empty((len(flat), size[0], size[1], 3), np.uint8)
    for i, view in enumerate(flat):  # cv2 works on one image at a time
        up = cv2.resize(view, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        bgr = cv2.applyColorMap((up * 255).round().astype(np.uint8), colormap)
        out[i] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return out.reshape(*lead, views, size[0], size[1], 3)


def overlay(frames: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend heatmaps onto frames, both (..., H, W, 3) uint8: ``(1 - alpha) * frame + alpha * heat``."""
    if frames.shape != heat.shape:
        raise ValueError(f"frames {frames.shape} and heatmaps {heat.shape} must have the same shape")
    f = frames.reshape(-1, *frames.shape[-3:])
    h = heat.reshape(-1, *heat.shape[-3:])
    out = np.stack([cv2.addWeighted(a, 1.0 - alpha, b, alpha, 0.0) for a, b in zip(f, h, strict=True)])
    return out.reshape(frames.shape)


def load_colormap(ckpt: str | Path, codec: Codec) -> LatentColormap:
    """The bundle's stored colour basis (module ``colormap``) if it has one, else the paper's encoding."""
    if "colormap" not in read_manifest(ckpt)["modules"]:
        return LatentColormap(codec)
    shape = (3, *codec.config.latent_shape)
    config = load_config(ckpt, "colormap", ColormapConfig)
    basis = load_weights(ckpt, "colormap", ColormapBasis(torch.zeros(shape), config))
    return LatentColormap(codec, basis.to(next(codec.parameters()).device))
