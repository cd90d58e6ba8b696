"""Flow map: time convention, DIFF2FLOW initialisation, the PSD losses, k-step sampling and gradients."""

import copy

import pytest
import torch

from tests.models.helpers import OracleNet, randomise_output, tiny_net_config
from vidplan_server.models.edm import EDMConfig, EDMDenoiser
from vidplan_server.models.flow_map import FlowMap, flow_loss, interpolate, semigroup_loss
from vidplan_server.models.video_net import VideoNet

SHAPE = (2, 3, 4, 12, 4)  # B, H, C, h, w


def _cond(B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = tiny_net_config()
    return torch.randn(B, c.history, 4, 12, 4, generator=g), torch.rand(B, c.horizon, 7, generator=g) * 2 - 1


def _trained_like_denoiser():
    torch.manual_seed(0)
    d = EDMDenoiser(VideoNet(tiny_net_config()), EDMConfig(sigma_data=0.7))
    randomise_output(d.net)
    return d


def test_time_convention_noise_at_zero_data_at_one():
    x1, x0 = torch.ones(SHAPE), torch.zeros(SHAPE)
    assert torch.equal(interpolate(x1, x0, torch.zeros(2)), x0)
    assert torch.equal(interpolate(x1, x0, torch.ones(2)), x1)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_k_step_sampler_of_an_exact_model_lands_on_the_data(steps):
    """With a denoiser that is exact for point-mass data, X_{t_min, 1} maps any noise to that point.

    Would fail if the sampler integrated in the other time direction or mis-converted to EDM space.
    """
    target = torch.randn(1, *SHAPE[1:])
    flow = FlowMap(EDMDenoiser(OracleNet(target, tiny_net_config()), EDMConfig(sigma_data=0.7)))
    hist, act = _cond()
    out = flow.sample(hist, act, steps=steps, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(out, target.expand(SHAPE), atol=1e-4)
    assert flow.denoiser.net.calls == steps


def test_velocity_at_initialisation_reproduces_the_diffusion_velocity():
    denoiser = _trained_like_denoiser().eval()
    flow = FlowMap(copy.deepcopy(denoiser)).eval()
    hist, act = _cond()
    x = torch.randn(SHAPE)
    s = torch.tensor([0.2, 0.7])
    with torch.no_grad():
        sigma = (1 - s) / s
        x1_hat, eps_hat = denoiser(x / s.reshape(-1, 1, 1, 1, 1), sigma, hist, act)
        expected = x1_hat - eps_hat
        v_ss = flow.velocity(x, s, s, hist, act)
        v_st = flow.velocity(x, s, torch.tensor([0.9, 1.0]), hist, act)
    assert torch.allclose(v_ss, expected, atol=1e-5)
    assert torch.allclose(v_st, expected, atol=1e-5)  # zero-initialised end-time embedding
    # once the end-time embedding is trained, the end time changes the prediction
    with torch.no_grad():
        flow.end_time_embed[-1].weight.normal_()
        assert not torch.allclose(flow.velocity(x, s, torch.tensor([0.9, 1.0]), hist, act), expected, atol=1e-3)


def _exact_point_mass_velocity(target):
    """v_{s,t}(x) of the exact flow map for data at ``target``: X_{s,t}(x) = t x* + (1-t)(x - s x*)/(1-s)."""

    def velocity(x, s, t):
        s = s.reshape(-1, 1, 1, 1, 1)
        t = t.reshape(-1, 1, 1, 1, 1)
        X = t * target + (1 - t) * (x - s * target) / (1 - s)
        return (X - x) / (t - s).clamp_min(1e-12) if torch.any(t != s) else (target - x) / (1 - s)

    return velocity


def test_semigroup_loss_is_zero_for_an_exact_flow_and_positive_for_a_wrong_one():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(1, *SHAPE[1:], generator=g)
    x0 = torch.randn(SHAPE, generator=g)
    s, u, t = torch.tensor([0.1, 0.3]), torch.tensor([0.4, 0.5]), torch.tensor([0.8, 1.0])
    exact = _exact_point_mass_velocity(target)
    assert semigroup_loss(exact, target.expand(SHAPE), x0, s, u, t).item() < 1e-10
    # a velocity that ignores its end time and is not the exact flow breaks the semigroup property
    curved = lambda x, a, b: exact(x, a, a) * (1 + a.reshape(-1, 1, 1, 1, 1))
    assert semigroup_loss(curved, target.expand(SHAPE), x0, s, u, t).item() > 1e-3


def test_flow_loss_is_zero_for_the_exact_velocity():
    g = torch.Generator().manual_seed(1)
    target = torch.randn(1, *SHAPE[1:], generator=g)
    x0 = torch.randn(SHAPE, generator=g)
    t = torch.tensor([0.2, 0.6])
    assert flow_loss(_exact_point_mass_velocity(target), target.expand(SHAPE), x0, t).item() < 1e-10


def test_semigroup_teacher_gets_no_gradient():
    flow = FlowMap(_trained_like_denoiser())
    hist, act = _cond()
    x1, x0 = torch.randn(SHAPE), torch.randn(SHAPE)
    s, u, t = torch.tensor([0.1, 0.2]), torch.tensor([0.5, 0.6]), torch.tensor([0.9, 1.0])
    calls = []
    velocity = lambda x, a, b: (calls.append(torch.is_grad_enabled()), flow.velocity(x, a, b, hist, act))[1]
    semigroup_loss(velocity, x1, x0, s, u, t).backward()
    assert calls == [False, False, True]  # two teacher steps without gradient, then the student step


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_gradient_flows_from_k_step_output_to_actions(steps):
    flow = FlowMap(_trained_like_denoiser())
    flow.requires_grad_(False)
    hist, act = _cond()
    act = act.clone().requires_grad_(True)
    out = flow.sample(hist, act, steps=steps, noise=torch.randn(SHAPE))
    out.square().mean().backward()
    assert act.grad is not None and torch.isfinite(act.grad).all()
    assert act.grad.abs().sum() > 0


def test_spatial_action_maps_make_the_output_depend_on_where_the_action_points():
    """VideoNetConfig.action_maps: k extra input channels from a per-position MLP of the action; the output
    changes with the action even with the per-frame embedding (AdaGN) path removed."""
    from vidplan_server.models.video_net import VideoNet, position_features

    torch.manual_seed(0)
    net = VideoNet(tiny_net_config(action_maps=4)).eval()
    randomise_output(net)
    with torch.no_grad():
        net.action_embed[-1].weight.zero_()
        net.action_embed[-1].bias.zero_()
    x, hist = torch.randn(1, 3, 4, 12, 4), torch.randn(1, 2, 4, 12, 4)
    a, b = torch.zeros(1, 3, 7), torch.full((1, 3, 7), 0.5)
    with torch.no_grad():
        out_a, out_b = (net(x, hist, act, torch.zeros(1)) for act in (a, b))
    assert out_a.shape == x.shape and not torch.allclose(out_a, out_b, atol=1e-4)
    pos = position_features(6, 2, 3)
    assert pos.shape == (12, 6, 2) and pos.abs().max() <= 1.0
    assert not torch.allclose(pos[:, 0], pos[:, -1])  # rows (the stacked views) are told apart
