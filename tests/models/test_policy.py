"""The flow-matching policy: chunk representation, sampling with noise, training, the training stage."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from vidplan_server.cli import main
from vidplan_server.data.errors import DatasetError
from vidplan_server.models.policy import ChunkCodec, FlowPolicy, PolicyConfig, fit_delta_scale, load_policy
from vidplan_server.training.policy_stage import is_demonstration, policy_data, random_shift

TINY = PolicyConfig(
    vocab=("cube", "pick", "red", "the", "up"),
    channels=(8, 8, 16, 16),
    text_dim=16,
    feature_dim=32,
    hidden=64,
    flow_steps=4,
)


def inputs(B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand((B, 3, 3, 64, 64), generator=g)
    state = torch.tensor([[0.5, 0.0, 0.3, math.pi - 0.01, 0.0, 0.2, 0.0]]).repeat(B, 1)
    return images, state


def test_chunk_codec_round_trip_across_the_roll_wrap():
    codec = ChunkCodec(TINY)
    _, state = inputs()
    chunk = state[:, None].repeat(1, 15, 1).clone()
    chunk[..., 0] += torch.linspace(0, 0.1, 15)
    chunk[..., 3] = -math.pi + 0.02  # roll crossed +-pi: a 0.03 rad turn, not -2 pi
    chunk[..., 6] = 1.0
    x = codec.encode(chunk, state)
    assert x[..., 3].abs().max() < 0.1  # small offset, not a wrap
    assert torch.allclose(x[..., 6], torch.ones(2, 15))
    back = codec.decode(x, state)
    assert torch.allclose(back[..., :3], chunk[..., :3], atol=1e-5)
    assert torch.allclose(
        torch.remainder(back[..., 3] - chunk[..., 3] + math.pi, 2 * math.pi) - math.pi, torch.zeros(2, 15), atol=1e-5
    )


def test_samples_differ_with_the_noise_and_repeat_with_the_same_noise():
    torch.manual_seed(0)
    policy = FlowPolicy(TINY).eval()
    images, state = inputs(1)
    noise = torch.randn((1, 3, 15, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = policy.sample(images, state, ["pick up the red cube"], noise)
        b = policy.sample(images, state, ["pick up the red cube"], noise.clone())
    assert a.shape == (1, 3, 15, 7)
    assert torch.equal(a, b)
    assert (a[0, 0] - a[0, 1]).abs().max() > 1e-3 and (a[0, 1] - a[0, 2]).abs().max() > 1e-3
    assert ((a[..., 6] >= 0) & (a[..., 6] <= 1)).all()


def test_a_tiny_policy_learns_a_fixed_batch():
    torch.manual_seed(0)
    cfg = replace(TINY, image_size=(32, 32))
    policy = FlowPolicy(cfg)
    _, state = inputs(8)
    images = torch.rand((8, 3, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    chunk = state[:, None].repeat(1, 15, 1).clone()
    chunk[..., 2] -= torch.linspace(0.01, 0.15, 15)  # go down 15 cm
    chunk[..., 6] = 1.0  # and close
    noise = torch.randn((1, 4, 15, 7), generator=torch.Generator().manual_seed(5))
    texts = ["pick up the red cube"] * 8

    def sample_error():  # in the head's normalised units (angles wrapped)
        with torch.no_grad():
            out = policy.sample(images[:1], state[:1], texts[:1], noise)[0]
        return (
            (policy.chunk_codec.encode(out, state[:1].expand(4, -1)) - policy.chunk_codec.encode(chunk[:1], state[:1]))
            .abs()
            .mean()
            .item()
        )

    before = sample_error()
    opt = torch.optim.Adam(policy.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        loss = policy.loss(images, state, texts, chunk, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = sample_error()
    assert after < 0.3 * before, (before, after)


def test_fit_delta_scale_is_the_99th_percentile_of_offsets():
    states = np.zeros((100, 7))
    states[:, 3] = math.pi - 0.01
    chunks = np.zeros((100, 15, 7))
    chunks[..., 0] = np.linspace(0, 0.2, 100)[:, None]
    chunks[..., 3] = -math.pi + 0.01  # 0.02 rad across the wrap
    scale = fit_delta_scale(chunks, states)
    assert scale[0] == pytest.approx(0.198, abs=2e-3)
    assert scale[3] == pytest.approx(0.02, abs=1e-6)
    assert scale[1] == 1e-3 and scale[4] == 1e-2  # floors


def test_random_shift_moves_views_by_at_most_the_padding():
    img = torch.zeros((2, 3, 3, 16, 16))
    img[..., 8, 8] = 1.0
    out = random_shift(img, 2, torch.Generator().manual_seed(0))
    ys, xs = torch.nonzero(out[:, :, 0] > 0.5, as_tuple=True)[2:]
    assert out.shape == img.shape and len(ys) == 6
    assert ((ys - 8).abs() <= 2).all() and ((xs - 8).abs() <= 2).all()


def test_only_successful_nominal_episodes_are_demonstrations(tiny_dataset, demo_dataset, short_episodes):
    assert is_demonstration(True, {"failure_mode": ""}) and is_demonstration(True, {})
    assert not is_demonstration(False, {}) and not is_demonstration(True, {"failure_mode": "drop"})
    with pytest.raises(DatasetError, match="no successful nominal episodes"):
        policy_data(tiny_dataset, [0, 1], (64, 64), 15, progress=False)
    data = policy_data(demo_dataset, [0, 1], (64, 64), 15, progress=False)
    assert data.frames.shape[1:] == (3, 64, 64, 3) and data.chunk.shape[1:] == (15, 7)
    assert len(data) == data.state.shape[0] == sum(len(ep) for ep in short_episodes)  # every step of both
    # The chunk of the last step holds its action.
    assert np.allclose(data.chunk[len(data) - 1], data.chunk[len(data) - 1][0])


def test_train_policy_writes_a_loadable_module(tiny_policy_bundle, short_episodes):
    policy = load_policy(tiny_policy_bundle)
    cfg = policy.config
    assert "cube" in cfg.vocab or "duck" in cfg.vocab or len(cfg.vocab) > 3
    assert cfg.chunk == 15 and len(cfg.delta_scale) == 6
    images, state = inputs(1)
    with torch.no_grad():
        out = policy.sample(images, state, [short_episodes[0].language_instruction], torch.randn(1, 2, 15, 7))
    assert out.shape == (1, 2, 15, 7) and torch.isfinite(out).all()


def test_train_policy_refuses_data_without_demonstrations(tiny_dataset, tmp_path, capsys):
    code = main(
        [
            "train",
            "policy",
            "--data",
            str(tiny_dataset),
            "--out",
            str(tmp_path / "c"),
            "--preset",
            "tiny",
            "--steps",
            "2",
            "--quiet",
        ]
    )
    assert code == 2 and "no successful nominal episodes" in capsys.readouterr().err


def test_spatial_softmax_keypoints_find_where_a_channel_fires():
    cfg = replace(TINY, image_size=(32, 32), pooling="spatial_softmax")
    policy = FlowPolicy(cfg)
    h = w = 2  # 32 px after four stride-2 blocks
    x = torch.full((1, 3, 16, h, w), -10.0)
    x[0, 0, 0, 0, 1] = 10.0  # channel 0 of view 0 fires top-right
    x[0, 1, 0, 1, 0] = 10.0  # channel 0 of view 1 fires bottom-left
    kp = policy.keypoints(x)
    assert kp.shape == (1, 3, 16, 3)
    assert torch.allclose(kp[0, 0, 0, :2], torch.tensor([1.0, -1.0]), atol=1e-3)  # (x, y)
    assert torch.allclose(kp[0, 1, 0, :2], torch.tensor([-1.0, 1.0]), atol=1e-3)
    images, state = inputs(2)
    images = torch.rand((2, 3, 3, 32, 32), generator=torch.Generator().manual_seed(1))
    noise = torch.randn((2, 2, 15, 7), generator=torch.Generator().manual_seed(2))
    out = policy.sample(images, state, ["pick up the red cube"] * 2, noise)
    assert out.shape == (2, 2, 15, 7) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="pooling"):
        replace(TINY, pooling="max")
