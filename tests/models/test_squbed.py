"""S-QUBED: VMF entropy against closed forms, the decomposition on constructed embeddings, batched rollouts."""

import numpy as np
import pytest
import torch

from vidplan_server.models.squbed import (
    SqubedCalibration,
    SqubedConfig,
    decompose,
    perturb_knots,
    relative_entropy,
    unit,
    vmf_entropy,
    vmf_fit,
)


def test_vmf_entropy_matches_the_closed_form_on_the_2_sphere():
    k = np.array([1e-4, 0.3, 1.0, 5.0, 50.0, 400.0])
    closed = -np.log(k / (4 * np.pi * np.sinh(np.minimum(k, 700)))) - k * (1 / np.tanh(k) - 1 / k)
    assert np.allclose(vmf_entropy(k, 3), closed, rtol=1e-9, atol=1e-6)


@pytest.mark.parametrize("d", [2, 3, 48])
def test_vmf_entropy_at_zero_concentration_is_the_log_area_of_the_sphere(d):
    from scipy.special import gammaln

    log_area = np.log(2.0) + (d / 2) * np.log(np.pi) - gammaln(d / 2)
    assert np.isclose(vmf_entropy(np.array(1e-9), d), log_area, atol=1e-6)
    # and it falls as the distribution concentrates
    h = vmf_entropy(np.array([1.0, 10.0, 1e3, 1e6]), d)
    assert (np.diff(h) < 0).all()


def test_vmf_fit_recovers_direction_and_a_larger_kappa_for_tighter_samples():
    rng = np.random.default_rng(0)
    mu = unit(rng.normal(size=16))
    tight = unit(mu + 0.05 * rng.normal(size=(200, 16)))
    loose = unit(mu + 0.5 * rng.normal(size=(200, 16)))
    m_t, k_t = vmf_fit(tight)
    _, k_l = vmf_fit(loose)
    assert m_t @ mu > 0.99 and k_t > 10 * k_l
    assert relative_entropy(tight, 1e8) < relative_entropy(loose, 1e8)


def _embeddings(prompt_spread: float, video_spread: float, seed=0, B=2, n=4, m=5, H=3, D=12):
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=(B, 1, 1, H, D))
    prompts = centre + prompt_spread * rng.normal(size=(B, n, 1, H, D))
    return prompts + video_spread * rng.normal(size=(B, n, m, H, D))


def test_identical_videos_have_zero_epistemic_and_spread_ones_more():
    same = _embeddings(0.3, 0.0)
    d0 = decompose(same)
    assert d0.epistemic.shape == (2, 3) and d0.request_epistemic.shape == (2,)
    assert np.allclose(d0.epistemic, 0.0) and np.allclose(d0.request_epistemic, 0.0)
    assert (d0.aleatoric > 0).all()
    d1 = decompose(_embeddings(0.3, 0.05))
    d2 = decompose(_embeddings(0.3, 0.3))
    assert (d1.epistemic > 0).all() and (d2.epistemic > d1.epistemic).all()
    assert np.allclose(d2.total, d2.aleatoric + d2.epistemic)


def test_identical_prompts_have_zero_aleatoric_and_spread_prompts_more():
    d0 = decompose(_embeddings(0.0, 0.0))
    assert np.allclose(d0.total, 0.0) and np.allclose(d0.request_total, 0.0)
    low, high = decompose(_embeddings(0.05, 0.0)), decompose(_embeddings(0.5, 0.0))
    assert (high.aleatoric > low.aleatoric).all() and (high.request_aleatoric > low.request_aleatoric).all()


def test_latent_prompts_perturb_pose_within_the_actuation_noise_and_keep_the_gripper():
    cfg = SqubedConfig(latent_prompts=3, videos=2, position_noise_m=0.002, rotation_noise_rad=0.01)
    knots = torch.rand(2, 5, 7)
    out = perturb_knots(knots, cfg, torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 5, 7)
    d = out - knots[:, None]
    assert torch.equal(d[..., 6], torch.zeros_like(d[..., 6]))
    assert d[..., :3].abs().max() < 0.002 * 6 and d[..., 3:6].abs().max() < 0.01 * 6
    assert d[..., :3].abs().max() > 0
    with pytest.raises(ValueError, match="latent_prompts"):
        SqubedConfig(latent_prompts=1)


def test_calibration_map_is_a_logistic_fit_that_ranks_like_the_entropy():
    rng = np.random.default_rng(0)
    total = rng.uniform(0, 10, 2000)
    ok = rng.uniform(size=2000) < 1 / (1 + np.exp(-(3.0 - 0.6 * total)))
    cal = SqubedCalibration().fit(total, ok)
    assert abs(float(cal.b) + 0.6) < 0.15 and abs(float(cal.a) - 3.0) < 0.6
    q = cal(np.array([1.0, 5.0, 9.0]))
    assert (q[1:] < q[:-1]).all()


def test_rollouts_are_one_batch_of_n_times_m_and_seeded(tiny_bundle):
    from vidplan_server.models.squbed import estimate, squbed_rollouts
    from vidplan_server.models.world_model import WorldModel

    world = WorldModel.load(tiny_bundle)
    calls = []
    hook = world.flow_map.denoiser.net.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    cfg = SqubedConfig(latent_prompts=3, videos=2)
    hist = torch.randn(2, world.history, 4, 48, 16)
    knots = torch.tensor([0.5, 0.0, 0.3, 3.14, 0.0, 0.0, 0.0]).expand(2, world.horizon, 7)
    emb = squbed_rollouts(world, hist, knots, cfg, torch.Generator().manual_seed(0))
    hook.remove()
    assert calls == [2 * 3 * 2]  # one network evaluation (k = 1) on all B * n * m rollouts
    assert emb.shape == (2, 3, 2, world.horizon, 4 * 6 * 2)
    a, b = estimate(world, hist, knots, cfg, seed=4), estimate(world, hist, knots, cfg, seed=4)
    assert np.array_equal(a.total, b.total) and a.total.shape == (2, world.horizon)
    assert (a.total >= 0).all()
