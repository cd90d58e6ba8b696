"""UQ and value heads: shapes, gradients, returns, bundle round trip."""

import pytest
import torch

from vidplan_server.models.bins import VALUE_BINS
from vidplan_server.models.checkpoint import save_module
from vidplan_server.models.heads import (
    HeadNetConfig,
    UQHead,
    UQHeadConfig,
    ValueHead,
    ValueHeadConfig,
    discounted_returns,
    load_uq_head,
    load_value_head,
)

NET = HeadNetConfig(channels=(8, 8, 16), attention_heads=2, embed_dim=8)


def test_uq_head_gives_30_bins_per_latent_element():
    head = UQHead(UQHeadConfig(net=NET, history=2))
    logits = head(torch.randn(3, 5, 4, 48, 16), torch.randn(3, 2, 4, 48, 16))
    assert logits.shape == (3, 5, 4, 48, 16, 30)
    with pytest.raises(ValueError, match="history"):
        head(torch.randn(1, 5, 4, 48, 16), torch.randn(1, 3, 4, 48, 16))


def test_value_head_is_differentiable_with_respect_to_its_input_latents():
    torch.manual_seed(0)
    head = ValueHead(ValueHeadConfig(net=NET))
    latents = torch.randn(2, 5, 4, 48, 16, requires_grad=True)
    logits = head(latents)
    assert logits.shape == (2, 5, 20)
    VALUE_BINS.expected(logits).sum().backward()
    assert latents.grad is not None and torch.isfinite(latents.grad).all() and latents.grad.abs().sum() > 0
    pos_logits, attn = head.spatial(latents.detach())
    assert pos_logits.shape == (2, 5, 20, 48, 16)
    assert torch.allclose(attn.sum((-2, -1)), torch.ones(2, 5))


def test_value_head_frames_influence_each_other_only_through_time_layers():
    torch.manual_seed(0)
    head = ValueHead(ValueHeadConfig(net=NET)).eval()
    x = torch.randn(1, 5, 4, 48, 16)
    y = x.clone()
    y[:, 0] += 1.0  # change the first frame only
    a, b = head(x), head(y)
    assert not torch.allclose(a[:, 0], b[:, 0])


def test_discounted_returns_of_success_and_failure():
    r = discounted_returns(4, True, 0.5)
    assert r.tolist() == pytest.approx([0.125, 0.25, 0.5, 1.0])
    assert discounted_returns(4, False, 0.5).tolist() == [0.0] * 4
    assert discounted_returns(3, True, 1.0).tolist() == [1.0] * 3


def test_heads_round_trip_through_a_bundle(tmp_path):
    torch.manual_seed(0)
    uq, value = UQHead(UQHeadConfig(net=NET, flow_steps=2)), ValueHead(ValueHeadConfig(net=NET, gamma=0.9))
    save_module(tmp_path, "uq", uq, uq.config)
    save_module(tmp_path, "value", value, value.config)
    uq2, value2 = load_uq_head(tmp_path), load_value_head(tmp_path)
    assert uq2.config == uq.config and value2.config.gamma == 0.9
    x, h = torch.randn(1, 5, 4, 48, 16), torch.randn(1, 2, 4, 48, 16)
    assert torch.allclose(uq.eval()(x, h), uq2(x, h)) and torch.allclose(value.eval()(x), value2(x))
