"""C3's confidence probe: proper scoring rules, FSC / CS-BC shapes, monotone in eps, features by hooks, no
gradient into the world model."""

import pytest
import torch

from tests.models.helpers import randomise_output, tiny_net_config
from vidplan_server.models.c3_probe import C3Probe, C3ProbeConfig, FeatureTap, probe_config_for, scoring_loss
from vidplan_server.models.edm import EDMConfig, EDMDenoiser
from vidplan_server.models.flow_map import FlowMap
from vidplan_server.models.video_net import VideoNet


@pytest.mark.parametrize("rule", ["bce", "brier"])
def test_scoring_rules_are_minimised_by_the_true_frequency(rule):
    # outcomes that are 1 with frequency 0.3: the expected score over a grid of constant predictions is lowest at 0.3
    y = (torch.arange(1000) % 10 < 3).float()
    q = torch.linspace(0.02, 0.98, 49)
    scores = torch.stack([scoring_loss(torch.logit(p).expand(1000), y, rule).mean() for p in q])
    assert abs(float(q[scores.argmin()]) - 0.3) <= 0.02 + 1e-6
    # and strictly worse away from it
    assert scores[0] > scores.min() and scores[-1] > scores.min()


def test_an_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="rule"):
        scoring_loss(torch.zeros(3), torch.zeros(3), "mse")
    with pytest.raises(ValueError, match="method"):
        C3ProbeConfig(method="xyz")


def _flow_map():
    torch.manual_seed(0)
    net = VideoNet(tiny_net_config())
    randomise_output(net)
    return FlowMap(EDMDenoiser(net, EDMConfig(sigma_data=0.5))).eval()


def _inputs(flow_map, B=2):
    c = flow_map.denoiser.net.config
    g = torch.Generator().manual_seed(1)
    hist = torch.randn((B, c.history, 4, 8, 8), generator=g)
    act = torch.randn((B, c.horizon, 7), generator=g)
    noise = torch.randn((B, c.horizon, 4, 8, 8), generator=g)
    return hist, act, noise


def test_feature_tap_keeps_the_last_evaluations_penultimate_features_and_embedding():
    fm = _flow_map()
    c = fm.denoiser.net.config
    hist, act, noise = _inputs(fm)
    with FeatureTap(fm) as tap:
        pred = fm.sample(hist, act, steps=2, noise=noise)
    assert pred.shape == (2, c.horizon, 4, 8, 8)
    assert tap.features.shape == (2 * c.horizon, c.channels[0], 4, 4)  # patchified 8x8 -> 4x4
    assert tap.embedding.shape == (2 * c.horizon, c.embed_dim)
    assert not fm.denoiser.net.conv_out._forward_pre_hooks  # removed on exit


@pytest.mark.parametrize("method", ["fsc", "cs"])
def test_probe_shapes_and_no_gradient_reaches_the_world_model(method):
    fm = _flow_map()
    c = fm.denoiser.net.config
    hist, act, noise = _inputs(fm)
    probe = C3Probe(probe_config_for(fm, method=method))
    with FeatureTap(fm) as tap:
        pred = fm.sample(hist, act, steps=1, noise=noise)
    logits = probe(tap.features, tap.embedding, 0.3)
    assert logits.shape == pred.shape == (2, c.horizon, 4, 8, 8)
    qs = probe.probabilities(tap.features, tap.embedding, (0.1, 0.5))
    assert set(qs) == ({probe.config.eps} if method == "fsc" else {0.1, 0.5})
    scoring_loss(logits, pred.detach() > 0, "bce").mean().backward()
    assert all(p.grad is None for p in fm.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in probe.parameters())


def test_cs_bc_probability_is_non_decreasing_in_eps_for_any_weights():
    cfg = C3ProbeConfig(method="cs", feature_channels=8, embed_dim=16, frames=3, hidden=16)
    torch.manual_seed(3)
    probe = C3Probe(cfg)
    with torch.no_grad():
        for p in probe.parameters():
            p.copy_(torch.randn_like(p))  # arbitrary, untrained weights
    feats, emb = torch.randn(6, 8, 4, 4), torch.randn(6, 16)
    eps = torch.linspace(0.01, 3.0, 40)
    q = torch.stack([torch.sigmoid(probe(feats, emb, float(e))) for e in eps])  # (40, 2, 3, 4, 8, 8)
    assert (q[1:] - q[:-1] >= -1e-6).all()
    assert (q[-1] - q[0]).max() > 0.01  # it does depend on eps
    # a per-element eps tensor gives the same as the scalar calls
    per = torch.full((2, 3, 4, 8, 8), 0.4)
    assert torch.allclose(probe(feats, emb, per), probe(feats, emb, 0.4))
