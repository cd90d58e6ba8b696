"""The shared training loop and the three stages, on the two-episode tiny dataset."""

import json

import numpy as np
import pytest
import torch

from vidplan_server.cli import main
from vidplan_server.data.episodes import load_episodes
from vidplan_server.models.checkpoint import CheckpointError
from vidplan_server.models.codec import CodecConfig
from vidplan_server.models.world_model import FlowConfig, WorldConfig, load_config, load_denoiser
from vidplan_server.training import presets
from vidplan_server.training.codec_stage import CodecStage, CodecTrainConfig
from vidplan_server.training.commands import TrainOptions, _windows
from vidplan_server.training.loop import LoopConfig, train
from vidplan_server.training.world_stages import FlowMapStage, WorldStage


def _fixed_loss(stage, seed=0, batches=3):
    """Mean loss over a few fixed batches with fixed noise (comparable before and after training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return (
            sum(stage.loss(stage.model, stage.batch(g, 8, torch.device("cpu")), g)[0].item() for _ in range(batches))
            / batches
        )


def test_a_few_codec_steps_lower_the_loss(tmp_path, tiny_dataset):
    eps = load_episodes(tiny_dataset, progress=False)
    torch.manual_seed(0)
    stage = CodecStage(presets.CODEC["tiny"].model, CodecTrainConfig(), eps[:1], eps[1:])
    before = _fixed_loss(stage)
    result = train(
        stage,
        LoopConfig(steps=30, batch_size=8, lr=2e-3, warmup_steps=2, eval_every=30, save_every=30),
        tmp_path / "ckpt",
        progress=False,
    )
    assert _fixed_loss(stage) < 0.8 * before
    assert result.final_eval["psnr"] > 10
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())["modules"]["codec"]["config"]
    assert cfg["scale"] != 1.0 and CodecConfig(
        **{
            **cfg,
            "image_size": tuple(cfg["image_size"]),
            "views": tuple(cfg["views"]),
            "block_out_channels": tuple(cfg["block_out_channels"]),
        }
    )


def _denoising_error(stage, sigma=2.0):
    """MSE of D(x1 + sigma * n) against x1 on all training windows, fixed noise."""
    hist, act, fut = stage.train_windows.gather(torch.arange(len(stage.train_windows)), torch.device("cpu"))
    noise = torch.randn(fut.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x1_hat, _ = stage.model(fut + sigma * noise, torch.full((len(fut),), sigma), hist, act)
    return ((x1_hat - fut) ** 2).mean().item()


def test_a_few_world_and_flow_map_steps_lower_their_losses(tmp_path, tiny_bundle, tiny_dataset):
    opts = TrainOptions(data=tiny_dataset, out=tiny_bundle, progress=False)
    config = load_config(tiny_bundle, "world", WorldConfig)
    train_w, held_w, _, _, _ = _windows(opts, 2, 5, 3, config.actions)
    torch.manual_seed(0)
    world = WorldStage(config, train_w, held_w)
    before = _denoising_error(world)
    train(
        world,
        LoopConfig(steps=40, batch_size=8, lr=3e-3, warmup_steps=2, eval_every=40, save_every=40),
        tmp_path / "w",
        progress=False,
    )
    after = _denoising_error(world)
    assert after < 0.8 * before, (before, after)

    denoiser, _ = load_denoiser(tiny_bundle)
    flow = FlowMapStage(FlowConfig(world=config), denoiser, train_w, held_w)
    before = _fixed_loss(flow)
    train(
        flow,
        LoopConfig(steps=25, batch_size=6, lr=3e-3, warmup_steps=2, eval_every=25, save_every=25),
        tmp_path / "f",
        progress=False,
    )
    after = _fixed_loss(flow)
    assert after < before, (before, after)


def test_cli_refuses_to_overwrite_a_run_and_resumes_it(tmp_path, tiny_dataset, capsys):
    out = tmp_path / "ckpt"
    args = ["train", "codec", "--data", str(tiny_dataset), "--out", str(out), "--preset", "tiny", "--quiet"]
    assert main(args + ["--steps", "2"]) == 0
    assert main(args + ["--steps", "2"]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main(args + ["--steps", "4", "--resume"]) == 0
    state = json.loads((out / "training" / "codec" / "state.json").read_text())
    assert state["step"] == 4 and [h["step"] for h in state["history"]] == [2, 4]


def test_resume_continues_exactly_where_an_uninterrupted_run_would_be(tmp_path, tiny_dataset):
    """Two steps, stop, two more steps == four steps in one go (same batches, same weights)."""
    eps = load_episodes(tiny_dataset, progress=False)
    cfg = LoopConfig(steps=4, batch_size=4, lr=1e-3, warmup_steps=1, eval_every=100, save_every=2)

    def stage():
        torch.manual_seed(0)
        return CodecStage(presets.CODEC["tiny"].model, CodecTrainConfig(), eps[:1], eps[1:])

    one = stage()
    train(one, cfg, tmp_path / "a", progress=False)
    two = stage()
    train(two, LoopConfig(**{**cfg.__dict__, "steps": 2}), tmp_path / "b", progress=False)
    two = stage()
    train(two, cfg, tmp_path / "b", resume=True, progress=False)
    for (k, a), b in zip(one.model.state_dict().items(), two.model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), k


def test_world_stage_needs_a_codec_first(tmp_path, tiny_dataset, capsys):
    code = main(["train", "world", "--data", str(tiny_dataset), "--out", str(tmp_path / "empty"), "--quiet"])
    assert code == 2
    assert "vidplan train codec" in capsys.readouterr().err


def test_bad_data_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "codec", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "--data" in capsys.readouterr().err


def test_resume_with_changed_hyper_parameters_is_refused(tmp_path, tiny_dataset):
    eps = load_episodes(tiny_dataset, progress=False)
    stage = CodecStage(presets.CODEC["tiny"].model, CodecTrainConfig(), eps[:1], eps[1:])
    train(stage, LoopConfig(steps=1, batch_size=2, eval_every=1, save_every=1), tmp_path / "c", progress=False)
    with pytest.raises(CheckpointError, match="only --steps may change"):
        train(
            stage,
            LoopConfig(steps=2, batch_size=4, eval_every=1, save_every=1),
            tmp_path / "c",
            resume=True,
            progress=False,
        )


def test_bad_device_is_a_clear_error(tmp_path, tiny_dataset, capsys):
    args = ["train", "codec", "--data", str(tiny_dataset), "--out", str(tmp_path / "o"), "--device", "gpu0"]
    assert main(args) == 2
    assert "--device gpu0" in capsys.readouterr().err


def test_episodes_shorter_than_a_window_are_a_clear_error(tmp_path, tiny_dataset, tiny_bundle, capsys):
    import shutil

    out = tmp_path / "ckpt"
    shutil.copytree(tiny_bundle, out, ignore=shutil.ignore_patterns("training"))
    args = [
        "train",
        "world",
        "--data",
        str(tiny_dataset),
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--quiet",
        "--horizon",
        "9",
    ]
    assert main(args) == 2
    assert "no training window" in capsys.readouterr().err


def test_action_gain_is_zero_when_actions_change_nothing_and_positive_when_they_explain_the_future():
    from vidplan_server.training.world_stages import action_gain

    g = torch.Generator().manual_seed(0)
    fut = torch.randn(8, 5, 4, 6, 2, generator=g)
    own = fut + 0.1 * torch.randn(fut.shape, generator=g)
    mse = ((own - fut) ** 2).mean().item()
    assert action_gain(mse, own, fut)["action_gain"] == 0.0
    worse = action_gain(mse, fut + torch.randn(fut.shape, generator=g), fut)
    assert worse["action_gain"] > 10 and worse["mse_shuffled_actions"] > mse


def test_world_and_flow_map_evaluations_report_the_action_gain(tiny_bundle, tiny_dataset):
    opts = TrainOptions(data=tiny_dataset, out=tiny_bundle, progress=False)
    config = load_config(tiny_bundle, "world", WorldConfig)
    train_w, held_w, _, _, _ = _windows(opts, 2, 5, 3, config.actions)
    denoiser, _ = load_denoiser(tiny_bundle)
    world = WorldStage(config, train_w, held_w)
    world.model = denoiser
    flow = FlowMapStage(FlowConfig(world=config), denoiser, train_w, held_w)
    with torch.no_grad():
        for stage in (world, flow):
            metrics = stage.evaluate(stage.model, torch.device("cpu"))
            assert np.isfinite(metrics["action_gain"]) and metrics["mse_shuffled_actions"] > 0


def test_world_training_can_start_from_a_bundles_world_module(tmp_path, tiny_bundle, tiny_dataset, capsys):
    import shutil

    out = tmp_path / "ckpt"
    out.mkdir()
    shutil.copy(tiny_bundle / "codec.safetensors", out / "codec.safetensors")
    shutil.copy(tiny_bundle / "config.json", out / "config.json")
    args = [
        "train",
        "world",
        "--data",
        str(tiny_dataset),
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--steps",
        "1",
        "--quiet",
        "--init-from",
        str(tiny_bundle),
    ]
    assert main(args) == 0
    start, _ = load_denoiser(tiny_bundle)
    tuned, _ = load_denoiser(out)
    worst = max(
        (a - b).abs().max().item()
        for a, b in zip(start.state_dict().values(), tuned.state_dict().values(), strict=True)
    )
    assert worst < 0.05  # one small step away from the bundle's weights, not a fresh initialisation
    meta = json.loads((out / "config.json").read_text())["modules"]["world"]["meta"]
    assert meta["init_from"] == str(tiny_bundle)
    assert (
        main(
            [
                "train",
                "codec",
                "--data",
                str(tiny_dataset),
                "--out",
                str(tmp_path / "other"),
                "--preset",
                "tiny",
                "--steps",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    assert main([*args[:5], str(tmp_path / "other"), *args[6:]]) == 2
    assert "codec differs" in capsys.readouterr().err


def test_action_deltas_start_from_the_bundles_function(tmp_path, tiny_bundle, tiny_dataset):
    import shutil

    from vidplan_server.models.world_model import build_denoiser
    from vidplan_server.training.commands import world_init

    config, weights = world_init(tiny_bundle, action_deltas=True)
    assert config.net.action_deltas
    padded = build_denoiser(config)
    padded.load_state_dict(weights)
    start, _ = load_denoiser(tiny_bundle)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 4, 48, 16, generator=g)
    hist = torch.randn(2, 2, 4, 48, 16, generator=g)
    act = torch.rand(2, 5, 7, generator=g) * 2 - 1
    sigma = torch.full((2,), 1.0)
    with torch.no_grad():
        a, _ = start(x, sigma, hist, act)
        b, _ = padded(x, sigma, hist, act)
    assert torch.allclose(a, b, atol=1e-6)  # the new inputs start at zero weight: the bundle's function
    feats = padded.net.action_features(act)
    assert feats.shape == (2, 5, 14)
    assert torch.allclose(feats[:, 2, 7:], 5.0 * (act[:, 2] - act[:, 1]))
    assert torch.allclose(feats[:, 0, 7:], feats[:, 1, 7:])  # the first frame repeats the second's motion

    out = tmp_path / "ckpt"
    out.mkdir()
    shutil.copy(tiny_bundle / "codec.safetensors", out / "codec.safetensors")
    shutil.copy(tiny_bundle / "config.json", out / "config.json")
    assert (
        main(
            [
                "train",
                "world",
                "--data",
                str(tiny_dataset),
                "--out",
                str(out),
                "--preset",
                "tiny",
                "--steps",
                "1",
                "--quiet",
                "--init-from",
                str(tiny_bundle),
                "--action-deltas",
            ]
        )
        == 0
    )
    assert load_denoiser(out)[1].net.action_deltas


def test_train_world_fresh_residual_with_action_maps_and_high_noise(tmp_path, tiny_bundle, tiny_dataset):
    """--residual --action-maps K --p-mean M --p-std S: the exported config carries all four, sigma_data is the std
    of the change from the current frame (smaller than the frames' own), and a resume can move the noise."""
    import shutil

    out = tmp_path / "ckpt"
    out.mkdir()
    shutil.copy(tiny_bundle / "codec.safetensors", out / "codec.safetensors")
    shutil.copy(tiny_bundle / "config.json", out / "config.json")
    base = ["train", "world", "--data", str(tiny_dataset), "--out", str(out), "--preset", "tiny", "--quiet"]
    assert main([*base, "--steps", "2", "--residual", "--action-maps", "4", "--p-mean", "0.3", "--p-std", "1.6"]) == 0
    denoiser, config = load_denoiser(out)
    assert config.edm.residual and config.net.action_maps == 4 and (config.edm.p_mean, config.edm.p_std) == (0.3, 1.6)
    assert denoiser.net.action_maps is not None
    _, absolute = load_denoiser(tiny_bundle)
    assert 0 < config.edm.sigma_data < absolute.edm.sigma_data
    assert main([*base, "--steps", "3", "--resume", "--p-mean", "1.0", "--p-std", "1.2"]) == 0
    assert (load_denoiser(out)[1].edm.p_mean, load_denoiser(out)[1].net.action_maps) == (1.0, 4)
    assert main([*base, "--steps", "4", "--resume", "--p-mean", "1.0"]) == 2  # --p-std is missing


def test_world_evaluation_reports_the_conditional_mean_against_copying_the_current_frame():
    """An untrained residual denoiser's mean (D at sigma_max) is the current frame: mse_mean == mse_copy, and it
    ignores the actions (mean_action_gain 0); a trained output layer moves both."""
    from tests.models.helpers import randomise_output, tiny_net_config
    from vidplan_server.data.windows import LatentWindows
    from vidplan_server.models.actions import ActionStats
    from vidplan_server.models.edm import EDMConfig
    from vidplan_server.models.world_model import WorldConfig
    from vidplan_server.training.world_stages import WorldStage

    g = torch.Generator().manual_seed(0)
    latents = [torch.randn(12, 4, 12, 4, generator=g) for _ in range(2)]
    actions = [torch.rand(12, 7, generator=g) * 2 - 1 for _ in range(2)]
    windows = LatentWindows.build(latents, actions, history=2, horizon=3, stride=1)
    stats = ActionStats(low=(-1.0,) * 7, high=(1.0,) * 7, angle_centre=(0.0, 0.0, 0.0))
    config = WorldConfig(actions=stats, net=tiny_net_config(), edm=EDMConfig(sigma_data=0.5, residual=True))
    stage = WorldStage(config, windows, windows)
    out = stage.evaluate(stage.model.eval(), torch.device("cpu"))
    assert out["mse_mean"] == pytest.approx(out["mse_copy"], rel=1e-3) and out["mean_action_gain"] == 0.0
    randomise_output(stage.model.net)
    out = stage.evaluate(stage.model.eval(), torch.device("cpu"))
    assert out["mse_mean"] != pytest.approx(out["mse_copy"], rel=1e-3) and out["mean_action_gain"] != 0.0
