"""Heatmaps: the latent colour map's endpoints with the bundled codec, the per-pixel map, overlays."""

import numpy as np
import pytest
import torch

from vidplan_server.models.checkpoint import DEFAULT_CHECKPOINT, save_module
from vidplan_server.models.heatmaps import (
    ColormapBasis,
    LatentColormap,
    load_colormap,
    overlay,
    pixel_heatmap,
)
from vidplan_server.models.world_model import load_codec


@pytest.fixture(scope="module")
def colormap():
    codec = load_codec(DEFAULT_CHECKPOINT).eval()
    return load_colormap(DEFAULT_CHECKPOINT, codec)


def test_zero_uncertainty_decodes_bluish_and_full_uncertainty_reddish(colormap):
    latent = colormap.basis.shape[1:]
    low = colormap.render(torch.zeros(latent)).reshape(-1, 3).mean(0)
    high = colormap.render(torch.ones(latent)).reshape(-1, 3).mean(0)
    r, g, b = low
    assert b > g > r and b > r + 10, f"zero uncertainty decodes to RGB {low}, not bluish"
    r, g, b = high
    assert r > g > b and r > b + 10, f"full uncertainty decodes to RGB {high}, not reddish"


def test_blend_hits_the_basis_at_0_half_and_1(colormap):
    latent = colormap.basis.shape[1:]
    blue, green, red = colormap.basis
    assert torch.allclose(colormap.blend(torch.zeros(latent)), blue, atol=1e-6)
    assert torch.allclose(colormap.blend(torch.full(latent, 0.5)), green, atol=1e-6)
    assert torch.allclose(colormap.blend(torch.ones(latent)), red, atol=1e-6)
    # per element: half the elements certain, half uncertain
    u = torch.zeros(latent)
    u[:, :, 8:] = 1.0
    mixed = colormap.blend(u)
    assert torch.allclose(mixed[:, :, :8], blue[:, :, :8], atol=1e-6)
    assert torch.allclose(mixed[:, :, 8:], red[:, :, 8:], atol=1e-6)


def test_rendered_maps_are_per_view_images(colormap):
    u = torch.rand(2, *colormap.basis.shape[1:])
    heat = colormap.render(u)
    assert heat.shape == (2, 3, 64, 64, 3) and heat.dtype == np.uint8


def test_pixel_heatmap_uses_jet_blue_for_certain_and_red_for_uncertain():
    u = torch.zeros(4, 48, 16)
    u[:, 16:32] = 1.0  # the second view fully uncertain
    heat = pixel_heatmap(u, views=3, size=(32, 32))
    assert heat.shape == (3, 32, 32, 3)
    r, g, b = heat[0].reshape(-1, 3).mean(0)
    assert b > 100 and r < 50
    r, g, b = heat[1].reshape(-1, 3).mean(0)
    assert r > 100 and b < 50


def test_overlay_blends_and_checks_shapes():
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    heat = np.full((2, 8, 8, 3), 200, np.uint8)
    out = overlay(frames, heat, alpha=0.5)
    assert out.shape == frames.shape and abs(int(out[0, 0, 0, 0]) - 100) <= 1
    with pytest.raises(ValueError, match="same shape"):
        overlay(frames, heat[:1])


def test_a_bundle_without_a_stored_basis_uses_the_papers_encoding(tmp_path):
    codec = load_codec(DEFAULT_CHECKPOINT).eval()
    save_module(tmp_path, "codec", codec, codec.config)
    cmap = load_colormap(tmp_path, codec)
    assert isinstance(cmap, LatentColormap) and cmap.basis.shape == (3, 4, 48, 16)
    stored = ColormapBasis(torch.randn(3, 4, 48, 16))
    save_module(tmp_path, "colormap", stored, stored.config)
    assert torch.allclose(load_colormap(tmp_path, codec).basis, stored.basis)
