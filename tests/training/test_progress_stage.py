"""Progress stage: labels are each object's distance to the recorded pose at the sample's frame, maps follow the
object the rewritten instruction names, the loss can be fitted; `vidplan train progress` adds the module and the
planner scores with it."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vidplan_server.cli import main
from vidplan_server.data.windows import LatentWindows
from vidplan_server.models.checkpoint import read_manifest
from vidplan_server.models.codec import Codec, CodecConfig
from vidplan_server.models.progress import ProgressHeadConfig
from vidplan_server.models.semantic import SemanticBackend, SemanticScores
from vidplan_server.training.progress_stage import ProgressStage, build_progress_data


class WordSemantic(SemanticBackend):
    """Relevance everywhere = 0.1 for an instruction with "red", 0.2 with "blue", 0.3 otherwise."""

    image_size = (16, 16)

    def encode_text(self, texts):
        return torch.tensor([[0.1 if "red" in t else 0.2 if "blue" in t else 0.3, 0.0] for t in texts])

    def score(self, images, text):
        n = len(images)
        rel = text[:, :1, None].expand(n, 8, 8).clone()
        return SemanticScores(torch.zeros(n), rel, torch.full((n, 2), 0.5))


def _episode(instruction, names, T, rng):
    poses = np.zeros((T, len(names), 7), np.float32)
    poses[:, :, :3] = rng.uniform(-0.5, 0.5, (T, len(names), 3))
    truth = SimpleNamespace(object_names=names, target_index=0, object_poses=poses)
    return SimpleNamespace(
        instruction=instruction, cartesian_position=rng.uniform(-0.5, 0.5, (T, 6)), ground_truth=truth
    )


@pytest.fixture(scope="module")
def synthetic():
    rng = np.random.default_rng(0)
    codec = Codec(CodecConfig(image_size=(16, 16), block_out_channels=(8, 8), norm_num_groups=4)).eval()
    C, Vh, w = codec.config.latent_shape
    eps = [
        _episode("pick up the red cube", ["red cube", "blue duck"], 9, rng),
        _episode("pick up the thing", ["red cube", "blue duck", "green lego"], 7, rng),
    ]
    latents = [torch.randn(9, C, Vh, w).half(), torch.randn(7, C, Vh, w).half()]
    actions = [torch.zeros(9, 7), torch.zeros(7, 7)]
    windows = LatentWindows.build(latents, actions, history=2, horizon=2, stride=1)
    data = build_progress_data(windows, eps, [0, 9], codec, WordSemantic(), torch.device("cpu"), progress=False)
    return data, eps


def test_labels_are_each_objects_distance_and_maps_follow_the_named_object(synthetic):
    data, eps = synthetic
    ep0, ep1 = eps
    d0 = np.linalg.norm(ep0.cartesian_position[:, None, :3] - ep0.ground_truth.object_poses[:, :, :3], axis=-1)
    assert np.allclose(data.distance[:9, :2].numpy(), d0, atol=1e-6)
    assert torch.isnan(data.distance[:9, 2]).all()  # the first scene has no third object
    first = data.windows.index["episode"] == 0
    assert data.valid[first].tolist() == [[True, True, False]] * int(first.sum())
    # the target's map is the episode's own instruction's ("red"), the other object's the rewritten one ("blue")
    assert torch.allclose(data.maps[first, 0].float(), torch.tensor(0.1), atol=1e-3)
    assert torch.allclose(data.maps[first, 1].float(), torch.tensor(0.2), atol=1e-3)
    # an instruction that does not name its target cannot be rewritten: only the target is a sample
    assert data.valid[~first].tolist() == [[True, False, False]] * int((~first).sum())
    idx = torch.tensor([0, 0, 0])
    rows = data.rows(idx, torch.tensor([0, 1, 2]))
    assert rows.tolist() == [data.windows.index["history"][0, -1], *data.windows.index["future"][0].tolist()]


def test_the_stage_fits_a_batch(synthetic):
    data, _ = synthetic
    stage = ProgressStage(ProgressHeadConfig(view_size=(8, 8), channels=(8, 8, 8), hidden=16), None, 1, data, data)
    g = torch.Generator().manual_seed(0)
    batch = stage.batch(g, 16, torch.device("cpu"))
    assert batch[0].shape == (16, 4, 24, 8) and batch[1].shape == (16, 24, 8) and not torch.isnan(batch[2]).any()
    model = stage.model
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = stage.loss(model, batch, g)[0].item()
    for _ in range(150):
        opt.zero_grad()
        stage.loss(model, batch, g)[0].backward()
        opt.step()
    assert stage.loss(model, batch, g)[0].item() < 0.5 * first
    metrics = stage.evaluate(model, torch.device("cpu"))
    assert set(metrics) == {"mae_true_m", "spearman_in_window"}


@pytest.fixture(scope="module")
def progress_bundle(tmp_path_factory, tiny_heads_bundle, tiny_dataset):
    out = tmp_path_factory.mktemp("progress") / "ckpt"
    shutil.copytree(tiny_heads_bundle, out)
    for stage in ("progress", "locator"):
        args = ["train", stage, "--data", str(tiny_dataset), "--out", str(out), "--preset", "tiny", "--steps", "4"]
        assert main([*args, "--quiet"]) == 0
    return out


def test_cli_trains_the_module_and_the_planner_scores_with_it(progress_bundle, short_episodes):
    from vidplan_server.planning.offline import request_from_episode
    from vidplan_server.planning.planner import Planner
    from vidplan_server.planning.types import PlanOptions

    modules = read_manifest(progress_bundle)["modules"]
    assert {"mae_true_m", "mae_pred_m", "spearman_in_window"} <= set(modules["progress"]["meta"]["eval"])
    assert {"position_error_m", "nearest_object_rate"} <= set(modules["locator"]["meta"]["eval"])
    planner = Planner.load(progress_bundle)
    assert planner.progress is not None and planner.locator is not None
    req = request_from_episode(short_episodes[0], 12, planner.history_len, planner.frame_stride, PlanOptions(4))
    history = planner.encode_history(req.history)
    props = planner.propose(req, 4, np.random.default_rng(0))
    noise = planner.rollout_noise(4, tuple(history.shape[2:]), 0)
    pred = planner.rollout(history, planner.knots(props.actions), 1, noise)
    text = planner.text_embedding(req.instruction)
    by_frame = planner.judge(pred, history, text)  # no knots: the progress head reads the predicted frame
    assert torch.isfinite(by_frame.progress_distance[:, -1]).all() and by_frame.target_position is None
    knots = planner.knots(props.actions)
    by_pose = planner.judge(pred, history, text, poses=knots)  # knots: the commanded position to the located object
    expected = (knots[:, -1, :3] - by_pose.target_position).norm(dim=-1)
    assert torch.allclose(by_pose.progress_distance[:, -1], expected, atol=1e-5)
    located = planner.locate_target(history, text)  # what a pulled proposal is bent toward: the judged target
    np.testing.assert_allclose(located, by_pose.target_position[0].numpy(), atol=1e-5)
    result = planner.plan(req)
    assert np.isfinite(result.proposal_scores).all()
    assert any(n.startswith("progress: instructed object located at") for n in result.notes), result.notes


def test_planning_signal_measures_the_progress_variant(progress_bundle, tiny_dataset, tmp_path):
    import json

    out = tmp_path / "signal"
    args = ["eval", "planning-signal", "--data", str(tiny_dataset), "--out", str(out), "--ckpt", str(progress_bundle)]
    more = ["--episodes", "1", "--steps-per-episode", "1", "--proposals", "4", "--variants", "model,progress"]
    assert main([*args, *more, "--quiet"]) == 0
    step = json.loads((out / "planning_signal.json").read_text())["steps"][0]
    assert len(step["scores"]["target"]["progress"]) == 4


def test_progress_needs_a_flow_map_and_a_semantic_encoder(tmp_path, tiny_bundle, tiny_dataset, capsys):
    out = tmp_path / "ckpt"
    shutil.copytree(tiny_bundle, out)  # codec, world, flow map: no semantic encoder yet
    code = main(["train", "progress", "--data", str(tiny_dataset), "--out", str(out), "--preset", "tiny", "--quiet"])
    assert code != 0 and "train semantic" in capsys.readouterr().err


def test_locator_labels_are_the_named_objects_position_at_the_current_frame_and_it_fits(synthetic):
    from vidplan_server.models.progress import LocatorConfig
    from vidplan_server.training.locator_data import LocatorData
    from vidplan_server.training.progress_stage import LocatorStage

    data, eps = synthetic
    assert torch.allclose(data.positions[:9, :2], torch.from_numpy(eps[0].ground_truth.object_poses[:, :, :3]))
    frames = LocatorData.from_progress(data)
    stage = LocatorStage(LocatorConfig(view_size=(8, 8), channels=(8, 8, 8), hidden=16), frames, frames)
    g = torch.Generator().manual_seed(0)
    latents, maps, positions = stage.batch(g, 16, torch.device("cpu"))
    assert latents.shape == (16, 4, 24, 8) and positions.shape == (16, 3) and not torch.isnan(positions).any()
    opt = torch.optim.Adam(stage.model.parameters(), lr=3e-3)
    first = stage.loss(stage.model, (latents, maps, positions), g)[0].item()
    for _ in range(150):
        opt.zero_grad()
        stage.loss(stage.model, (latents, maps, positions), g)[0].backward()
        opt.step()
    assert stage.loss(stage.model, (latents, maps, positions), g)[0].item() < 0.5 * first
    metrics = stage.evaluate(stage.model, torch.device("cpu"))
    assert set(metrics) == {"position_error_m", "nearest_object_rate"} and 0 <= metrics["nearest_object_rate"] <= 1


def test_concat_renumbers_windows_and_pads_scenes_with_fewer_objects(synthetic):
    from vidplan_server.training.progress_stage import ProgressData

    data, _ = synthetic
    first = data.windows.index["episode"] == 0
    two = ProgressData(  # a dataset whose scenes have two objects only: the first episode's windows and rows
        LatentWindows(
            data.windows.latents[:9], data.windows.actions[:9], {k: v[first] for k, v in data.windows.index.items()}
        ),
        data.maps[first, :2],
        data.valid[first, :2],
        data.distance[:9, :2],
        data.positions[:9, :2],
    )
    both = ProgressData.concat([two, data])
    n = int(first.sum())
    assert both.maps.shape == (n + len(data.maps), 3, *data.maps.shape[2:])
    assert not both.valid[:n, 2].any() and torch.isnan(both.positions[:9, 2]).all()
    # the second part's windows point at its own rows, now after the first part's 9
    assert torch.equal(both.windows.index["history"][n:], data.windows.index["history"] + 9)
    rows = both.rows(torch.arange(n, len(both.maps)), torch.zeros(len(data.maps), dtype=torch.long))
    own = data.positions[data.rows(torch.arange(len(data.maps)), rows * 0)]
    assert torch.allclose(both.positions[rows], own, equal_nan=True)
    assert torch.equal(both.maps[n:], data.maps) and torch.equal(both.valid[n:], data.valid)


def test_locator_trains_on_extra_recordings_too(progress_bundle, tiny_dataset, tmp_path):
    out = tmp_path / "ckpt"
    shutil.copytree(progress_bundle, out)
    shutil.rmtree(out / "training" / "locator")  # a fresh run, not a resume
    single = read_manifest(out)["modules"]["locator"]["meta"]["windows"]
    args = ["train", "locator", "--data", str(tiny_dataset), "--out", str(out), "--preset", "tiny", "--steps", "2"]
    assert main([*args, "--extra-data", str(tiny_dataset), "--quiet"]) == 0
    meta = read_manifest(out)["modules"]["locator"]["meta"]
    assert meta["extra_data"] == [str(tiny_dataset)] and meta["windows"] == 2 * single


def test_the_locator_error_benchmark_scores_the_located_point_against_the_truth(progress_bundle, tiny_dataset):
    import importlib.util
    from pathlib import Path

    from vidplan_server.planning.planner import Planner

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "locator_error.py"
    spec = importlib.util.spec_from_file_location("locator_error", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    planner = Planner.load(progress_bundle)
    r = bench.measure(planner, tiny_dataset, episodes=2, progress=False)
    assert r["frames"] > 0 and sum(r[f"hand_{n}"]["frames"] for *_, n in bench.HAND_BANDS) == r["frames"]
    assert 0 <= r["xy_error_median_m"] < 2 and 0 <= r["nearest_rate"] <= 1
    planner.locate_target = lambda history, text, frames: np.array([10.0, 10.0, 0.0])  # a point far off the table
    far = bench.measure(planner, tiny_dataset, episodes=2, progress=False)
    assert far["frames"] == r["frames"] and far["xy_error_median_m"] > 13.0
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--out", "x.json", "--data", "no/such/folder"])
    assert exit_.value.code == 2
