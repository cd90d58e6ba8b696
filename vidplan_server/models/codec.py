"""Latent codec: a KL autoencoder per camera view, latents of the three views stacked vertically.

The autoencoder is diffusers' ``AutoencoderKL`` -- the class family of the SD / SVD VAEs, so a user's
large diffusers-format VAE loads with :meth:`Codec.from_diffusers` and our small one trains with the
same code. The default config (blocks 16/32/64 channels, one ResNet per block, no mid-block attention,
4 latent channels, 4x downsampling) trains at about 1 s per batch of 16 64x64 frames on 2 CPU cores,
as fast as a hand-written compact autoencoder of the same width that we measured against it, so we
use the library class.

Layout (DESIGN "Cameras", "Latents"): each view is encoded on its own (B*V images), and the V view
latents are stacked along height in ``CAMERA_NAMES`` order, so a (B, V, 3, 64, 64) frame becomes a
(B, 4, V*16, 16) latent -- the same arrangement as encoding the vertically stacked image, without
the convolution leaking across view borders in the encoder.

Normalisation: latents are the posterior mean, shifted and scaled with ``shift`` and ``scale``
computed from training data after the codec is trained (so normalised latents have zero mean and
unit standard deviation), the diffusers ``shift_factor`` / ``scaling_factor`` convention.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from vidplan_client.contract import CAMERA_NAMES


@dataclass(frozen=True)
class CodecConfig:
    """Architecture of the per-view autoencoder plus the latent normalisation learned from data."""

    image_size: tuple[int, int] = (64, 64)  # per-view (H, W) in pixels
    views: tuple[str, ...] = CAMERA_NAMES
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (16, 32, 64)
    layers_per_block: int = 1
    norm_num_groups: int = 8
    mid_block_attention: bool = False
    shift: float = 0.0  # latent = (posterior mean - shift) * scale
    scale: float = 1.0

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def view_latent_size(self) -> tuple[int, int]:
        return self.image_size[0] // self.downsample, self.image_size[1] // self.downsample

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, V*h, w) of one stacked frame latent."""
        h, w = self.view_latent_size
        return self.latent_channels, len(self.views) * h, w

    def __post_init__(self) -> None:
        for size in self.image_size:
            if size % self.downsample:
                raise ValueError(f"image_size {self.image_size} is not divisible by the downsampling {self.downsample}")


def _autoencoder(config: CodecConfig):
    from diffusers import AutoencoderKL

    n = len(config.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        latent_channels=config.latent_channels,
        norm_num_groups=config.norm_num_groups,
        sample_size=config.image_size[0],
        mid_block_add_attention=config.mid_block_attention,
    )


class Codec(nn.Module):
    """Frames (B, V, 3, H, W) in [0, 1] <-> normalised stacked latents (B, C, V*h, w)."""

    def __init__(self, config: CodecConfig = CodecConfig(), vae=None) -> None:
        """``vae``: an existing diffusers ``AutoencoderKL`` matching ``config``; built from it when None."""
        super().__init__()
        self.config = config
        self.vae = vae if vae is not None else _autoencoder(config)

    # ------------------------------------------------------------------ per-view primitives
    def posterior(self, images: torch.Tensor):
        """diffusers' diagonal Gaussian posterior of images (N, 3, H, W) in [0, 1]."""
        return self.vae.encode(images * 2.0 - 1.0).latent_dist

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """Un-normalised per-view latents (N, C, h, w) -> images (N, 3, H, W), roughly in [0, 1]."""
        return (self.vae.decode(z).sample + 1.0) / 2.0

    # ------------------------------------------------------------------ stacked frames
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (..., V, 3, H, W) float in [0, 1] -> normalised latents (..., C, V*h, w)."""
        lead = frames.shape[:-4]
        V = frames.shape[-4]
        if V != len(self.config.views):
            raise ValueError(f"frames have {V} views, the codec expects {len(self.config.views)}")
        mean = self.posterior(frames.reshape(-1, *frames.shape[-3:])).mean
        z = (mean - self.config.shift) * self.config.scale
        C, h, w = z.shape[1:]
        z = z.reshape(-1, V, C, h, w).permute(0, 2, 1, 3, 4).reshape(*lead, C, V * h, w)
        return z

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (..., C, V*h, w) -> frames (..., V, 3, H, W), float, not clamped."""
        lead = latents.shape[:-3]
        C, Vh, w = latents.shape[-3:]
        V = len(self.config.views)
        z = latents.reshape(-1, C, V, Vh // V, w).permute(0, 2, 1, 3, 4).reshape(-1, C, Vh // V, w)
        images = self.decode_raw(z / self.config.scale + self.config.shift)
        return images.reshape(*lead, V, *images.shape[-3:])

    # ------------------------------------------------------------------ pretrained diffusers VAEs
    @classmethod
    def from_diffusers(cls, path: str | Path, image_size: tuple[int, int] | None = None) -> Codec:
        """Load a local diffusers ``AutoencoderKL`` folder (config.json + weights), e.g. an SD/SVD VAE.

        Its ``scaling_factor`` and ``shift_factor`` become our latent normalisation.
        """
        from diffusers import AutoencoderKL

        from vidplan_server.models.checkpoint import CheckpointError

        try:
            vae = AutoencoderKL.from_pretrained(str(path))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a diffusers AutoencoderKL folder: {exc}") from exc
        cfg = vae.config
        size = image_size or (int(cfg.sample_size), int(cfg.sample_size))
        config = CodecConfig(
            image_size=tuple(size),
            latent_channels=int(cfg.latent_channels),
            block_out_channels=tuple(cfg.block_out_channels),
            layers_per_block=int(cfg.layers_per_block),
            norm_num_groups=int(cfg.norm_num_groups),
            mid_block_attention=bool(getattr(cfg, "mid_block_add_attention", True)),
            shift=float(cfg.shift_factor or 0.0),
            scale=float(cfg.scaling_factor),
        )
        return cls(config, vae)

    def with_normalisation(self, shift: float, scale: float) -> Codec:
        self.config = replace(self.config, shift=float(shift), scale=float(scale))
        return self
