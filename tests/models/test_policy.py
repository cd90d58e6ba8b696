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


def test_the_target_head_learns_where_the_object_is_and_skips_unknown_rows():
    """The auxiliary head (target_aux > 0) regresses the object-minus-TCP offset; NaN rows are left out of the term,
    and a policy without the weight has no head and no term."""
    assert FlowPolicy(TINY).target_head is None
    torch.manual_seed(0)
    policy = FlowPolicy(replace(TINY, image_size=(32, 32), target_aux=1.0))
    g = torch.Generator().manual_seed(0)
    images = torch.rand((8, 3, 3, 32, 32), generator=g)
    _, state = inputs(8)
    # The object sits where the image is brightest in its first view's top-left quadrant: a learnable mapping.
    pos = state[:, :3] + torch.stack(
        [images[:, 0, 0, :16, :16].mean((1, 2)) - 0.5, torch.zeros(8), -0.1 + 0 * state[:, 0]], -1
    )
    chunk = state[:, None].repeat(1, 15, 1)
    texts = ["pick up the red cube"] * 8
    unknown = pos.clone()
    unknown[:4] = float("nan")
    terms = policy.loss_terms(images, state, texts, chunk, g, target_pos=unknown)
    assert torch.isfinite(terms["target"])
    goal = (pos[4:] - state[4:, :3]) / 0.25
    feats = policy.encode_obs(images[4:], state[4:], policy.encode_text(texts[4:]))
    assert terms["target"].item() == pytest.approx(
        torch.nn.functional.mse_loss(policy.target_head(feats), goal).item(), rel=1e-5
    )
    assert "target" not in policy.loss_terms(
        images, state, texts, chunk, g, target_pos=torch.full_like(pos, float("nan"))
    )
    assert "target" not in policy.loss_terms(images, state, texts, chunk, g)

    def error_cm():
        with torch.no_grad():
            return 100 * (policy.predict_target(images, state, texts) - pos).norm(dim=-1).mean().item()

    before = error_cm()
    opt = torch.optim.Adam(policy.parameters(), 3e-3)
    for _ in range(200):
        loss = policy.loss(images, state, texts, chunk, g, target_pos=pos)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert error_cm() < 0.3 * before, (before, error_cm())
    with pytest.raises(ValueError, match="no target head"):
        FlowPolicy(TINY).predict_target(images[:1], state[:1], texts[:1])
    with pytest.raises(ValueError, match="target_aux"):
        PolicyConfig(target_aux=-1.0)


def test_policy_samples_carry_the_instructed_objects_position(demo_dataset, short_episodes):
    from vidplan_server.training.policy_stage import PolicyData

    data = policy_data(demo_dataset, [0, 1], (64, 64), 15, progress=False)
    first = short_episodes[0].ground_truth
    T = len(short_episodes[0])
    assert data.target_pos.shape == (len(data), 3)
    assert np.allclose(data.target_pos[:T], first.object_poses[:, first.target_index, :3], atol=1e-5)
    both = PolicyData.concat([data, replace(data, target_pos=None)])
    assert both.target_pos.shape == (2 * len(data), 3)
    assert np.isfinite(both.target_pos[: len(data)]).all() and np.isnan(both.target_pos[len(data) :]).all()
    assert PolicyData.concat([replace(data, target_pos=None)] * 2).target_pos is None


def test_the_stage_warns_when_no_sample_has_a_position_for_the_target_head(demo_dataset):
    import warnings

    from vidplan_server.training.policy_stage import PolicyStage

    data = policy_data(demo_dataset, [0, 1], (64, 64), 15, progress=False)
    config = replace(TINY, target_aux=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PolicyStage(config, data, data)  # positions known: no warning
        PolicyStage(replace(config, target_aux=0.0), replace(data, target_pos=None), data)  # no head: none either
    unknown = replace(data, target_pos=np.full_like(data.target_pos, np.nan))
    for no_positions in (replace(data, target_pos=None), unknown):
        with pytest.warns(UserWarning, match="target_aux is 1.0 but no training sample"):
            PolicyStage(config, no_positions, data)


def test_train_policy_target_aux_from_the_cli(demo_dataset, tmp_path, capsys):
    out = tmp_path / "ckpt"
    args = ["train", "policy", "--data", str(demo_dataset), "--out", str(out), "--preset", "tiny", "--quiet"]
    assert main([*args, "--target-aux", "0.5"]) == 0
    policy = load_policy(out)
    assert policy.config.target_aux == 0.5 and policy.target_head is not None
    assert "target_error_cm" in capsys.readouterr().out
    assert main(["train", "codec", "--data", str(demo_dataset), "--out", str(tmp_path / "c"), "--target-aux", "1"]) == 2
    assert "--target-aux is only for `train policy`" in capsys.readouterr().err
