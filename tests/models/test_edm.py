"""EDM preconditioning identities, the loss weighting and the Heun sampler."""

import pytest
import torch

from tests.models.helpers import OracleNet, randomise_output, tiny_net_config
from vidplan_server.models.edm import EDMConfig, EDMDenoiser, edm_loss, heun_sample, heun_sigmas
from vidplan_server.models.video_net import VideoNet


@pytest.fixture()
def denoiser():
    torch.manual_seed(0)
    d = EDMDenoiser(VideoNet(tiny_net_config()), EDMConfig(sigma_data=0.7))
    randomise_output(d.net)
    return d.eval()


def _inputs(B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = tiny_net_config()
    x = torch.randn(B, c.horizon, 4, 12, 4, generator=g)
    hist = torch.randn(B, c.history, 4, 12, 4, generator=g)
    act = torch.rand(B, c.horizon, 7, generator=g) * 2 - 1
    return x, hist, act


def test_denoiser_returns_its_input_as_sigma_goes_to_zero(denoiser):
    x, hist, act = _inputs()
    with torch.no_grad():
        x1_hat, _ = denoiser(x, torch.full((2,), 1e-6), hist, act)
        far, _ = denoiser(x, torch.full((2,), 5.0), hist, act)
    assert torch.allclose(x1_hat, x, atol=1e-4)
    assert not torch.allclose(far, x, atol=1e-2)  # the network output matters away from sigma = 0


@pytest.mark.parametrize("sigma", [0.01, 0.5, 3.0, 60.0])
def test_noise_prediction_is_consistent_with_the_denoised_prediction(denoiser, sigma):
    x, hist, act = _inputs()
    with torch.no_grad():
        x1_hat, eps_hat = denoiser(x, torch.full((2,), sigma), hist, act)
    # x = x1_hat + sigma * eps_hat, the EDM decomposition of the noisy input
    assert torch.allclose(x1_hat + sigma * eps_hat, x, atol=1e-4 * max(1.0, sigma))


def test_preconditioning_matches_karras_table_1(denoiser):
    sigma = torch.tensor([0.3, 2.0])
    c_skip, c_out, c_in, c_noise = denoiser.precondition(sigma)
    sd = 0.7
    assert torch.allclose(c_skip, sd**2 / (sigma**2 + sd**2))
    assert torch.allclose(c_out, sigma * sd / torch.sqrt(sigma**2 + sd**2))
    assert torch.allclose(c_in, 1 / torch.sqrt(sigma**2 + sd**2))
    assert torch.allclose(c_noise, torch.log(sigma) / 4)
    # unit-variance training target and input at every sigma (the point of the preconditioning)
    assert torch.allclose(c_in**2 * (sd**2 + sigma**2), torch.ones(2))


def test_edm_loss_is_zero_for_the_oracle_and_positive_otherwise(denoiser):
    x1, hist, act = _inputs()
    target = x1[:1].clone()
    oracle = EDMDenoiser(OracleNet(target, tiny_net_config()), EDMConfig(sigma_data=0.7))
    g = torch.Generator().manual_seed(0)
    assert edm_loss(oracle, target.expand_as(x1), hist, act, g).item() < 1e-8
    assert edm_loss(denoiser, x1, hist, act, g).item() > 1e-3


def test_heun_sampler_uses_2n_minus_1_evaluations_and_recovers_a_point_mass():
    c = tiny_net_config()
    target = torch.randn(1, c.horizon, 4, 12, 4)
    net = OracleNet(target, c)
    oracle = EDMDenoiser(net, EDMConfig(sigma_data=0.7))
    _, hist, act = _inputs()
    out = heun_sample(oracle, hist, act, steps=6, generator=torch.Generator().manual_seed(1))
    assert net.calls == 2 * 6 - 1
    assert torch.allclose(out, target.expand_as(out), atol=1e-4)


def test_heun_schedule_runs_from_sigma_max_to_zero():
    sig = heun_sigmas(18, EDMConfig())
    assert sig[0] == pytest.approx(80.0) and sig[-2] == pytest.approx(0.002, rel=1e-4) and sig[-1] == 0
    assert torch.all(sig[1:] < sig[:-1])


def test_a_residual_denoiser_starts_at_the_current_frame_and_keeps_the_edm_identities():
    """EDMConfig.residual: with a zero output layer (untrained) D is centred on the current frame at every sigma, and
    x = x1_hat + sigma * eps_hat still holds (the samplers and the flow map rely on it)."""
    torch.manual_seed(0)
    x, hist, act = _inputs()
    fresh = EDMDenoiser(VideoNet(tiny_net_config()), EDMConfig(sigma_data=0.2, residual=True)).eval()
    current = hist[:, -1:].expand_as(x)
    with torch.no_grad():
        for sigma in (80.0, 1.0):
            x1_hat, _ = fresh(current + sigma * x, torch.full((2,), sigma), hist, act)
            assert torch.allclose(x1_hat, current + (0.2**2 / (sigma**2 + 0.2**2)) * sigma * x, atol=1e-5)
        sample = heun_sample(fresh, hist, act, steps=18, generator=torch.Generator().manual_seed(1))
    # untrained, D is the exact denoiser of N(current frame, sd^2): samples spread around the current frame by sd
    change = sample - current
    assert abs(change.mean().item()) < 0.05 and change.std().item() == pytest.approx(0.2, rel=0.3)
    randomise_output(fresh.net)
    with torch.no_grad():
        for sigma in (0.01, 3.0, 60.0):
            x1_hat, eps_hat = fresh(x, torch.full((2,), sigma), hist, act)
            assert torch.allclose(x1_hat + sigma * eps_hat, x, atol=1e-4 * max(1.0, sigma))
        absolute = EDMDenoiser(fresh.net, EDMConfig(sigma_data=0.2))(x, torch.full((2,), 3.0), hist, act)[0]
        residual = fresh(x, torch.full((2,), 3.0), hist, act)[0]
    assert not torch.allclose(absolute, residual, atol=1e-3)  # the anchor changes the prediction
