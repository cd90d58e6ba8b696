"""Codec: view stacking, normalisation, and loading a user's diffusers AutoencoderKL folder."""

import pytest
import torch

from vidplan_server.models.checkpoint import CheckpointError
from vidplan_server.models.codec import Codec, CodecConfig

TINY = CodecConfig(block_out_channels=(8, 8, 16), norm_num_groups=4)


def test_views_are_stacked_vertically_in_camera_order():
    torch.manual_seed(0)
    codec = Codec(TINY).eval()
    frames = torch.rand(2, 3, 3, 64, 64)
    with torch.no_grad():
        z = codec.encode(frames)
        assert z.shape == (2, 4, 48, 16) and TINY.latent_shape == (4, 48, 16)
        for v in range(3):  # rows 16v..16v+16 are exactly view v encoded alone
            alone = (codec.posterior(frames[:, v]).mean - TINY.shift) * TINY.scale
            assert torch.allclose(z[:, :, 16 * v : 16 * (v + 1)], alone, atol=1e-5)
        out = codec.decode(z)
    assert out.shape == frames.shape
    with torch.no_grad():
        for v in range(3):
            single = codec.decode_raw(z[:, :, 16 * v : 16 * (v + 1)])
            assert torch.allclose(out[:, v], single, atol=1e-5)


def test_normalisation_is_applied_on_encode_and_undone_on_decode():
    torch.manual_seed(0)
    codec = Codec(TINY).eval()
    frames = torch.rand(1, 3, 3, 64, 64)
    with torch.no_grad():
        plain = codec.encode(frames)
        codec.with_normalisation(shift=0.5, scale=2.0)
        scaled = codec.encode(frames)
        assert torch.allclose(scaled, (plain - 0.5) * 2.0, atol=1e-5)
        assert torch.allclose(codec.decode(scaled), Codec.decode(codec, scaled), atol=1e-6)


def test_wrong_view_count_is_refused():
    with pytest.raises(ValueError, match="2 views"):
        Codec(TINY).encode(torch.rand(1, 2, 3, 64, 64))


def test_loads_a_diffusers_autoencoder_folder(tmp_path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=0.3,
        shift_factor=0.1,
    )
    vae.save_pretrained(tmp_path / "vae")
    codec = Codec.from_diffusers(tmp_path / "vae")
    assert codec.config.scale == pytest.approx(0.3) and codec.config.shift == pytest.approx(0.1)
    assert codec.config.image_size == (32, 32) and codec.config.latent_shape == (4, 48, 16)
    frames = torch.rand(1, 3, 3, 32, 32)
    with torch.no_grad():
        z = codec.encode(frames)
        first_view = (vae.encode(frames[:, 0] * 2 - 1).latent_dist.mean - 0.1) * 0.3
    assert z.shape == (1, 4, 48, 16)
    assert torch.allclose(z[:, :, :16], first_view, atol=1e-5)


def test_a_folder_that_is_not_a_diffusers_vae_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not a diffusers AutoencoderKL"):
        Codec.from_diffusers(tmp_path)
