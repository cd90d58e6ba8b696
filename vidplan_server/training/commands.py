"""Entry points behind ``vidplan train codec|world|flowmap``: load data, build the stage, run the loop.

All three write into one checkpoint bundle (``--out``): ``codec`` first, then ``world`` (needs the
codec), then ``flowmap`` (needs codec and world). Episodes are split into training and held-out sets by
:func:`~vidplan_server.data.episodes.split_episodes` with the run's seed, the same split for every
stage of a bundle.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from vidplan_server.data.episodes import load_episodes, split_episodes
from vidplan_server.data.errors import DatasetError
from vidplan_server.data.schema import CAMERA_NAMES
from vidplan_server.data.windows import LatentWindows, cached_latents
from vidplan_server.models.actions import ActionNormalizer, fit_action_stats
from vidplan_server.models.checkpoint import CheckpointError, load_config, read_manifest, save_module
from vidplan_server.models.edm import EDMConfig
from vidplan_server.models.heads import UQHeadConfig, ValueHeadConfig, discounted_returns
from vidplan_server.models.heatmaps import fit_colormap
from vidplan_server.models.semantic import words
from vidplan_server.models.world_model import FlowConfig, WorldConfig, load_codec, load_denoiser, load_flow_map
from vidplan_server.training import presets
from vidplan_server.training.codec_stage import CodecStage, CodecTrainConfig
from vidplan_server.training.head_stages import (
    SemanticFrames,
    SemanticStage,
    UQStage,
    ValueData,
    ValueStage,
    flow_rollouts,
)
from vidplan_server.training.loop import LoopConfig, TrainResult, pick_device, train
from vidplan_server.training.world_stages import FlowMapStage, WorldStage


@dataclass(frozen=True)
class TrainOptions:
    data: Path
    out: Path
    preset: str = "small"
    steps: int | None = None
    lr: float | None = None  # peak learning rate (None: the preset's); a warm start fine-tunes with less
    resume: bool = False
    seed: int = 0
    device: str | None = None
    held_out_fraction: float = 0.1
    progress: bool = True


def _loop(base: LoopConfig, opts: TrainOptions) -> LoopConfig:
    cfg = replace(base, seed=opts.seed)
    if opts.lr is not None:
        cfg = replace(cfg, lr=opts.lr)
    if opts.steps is not None:
        cfg = replace(
            cfg,
            steps=opts.steps,
            eval_every=min(cfg.eval_every, opts.steps),
            save_every=min(cfg.save_every, opts.steps),
            warmup_steps=min(cfg.warmup_steps, opts.steps),
        )
    return cfg


def _meta(opts: TrainOptions, n_train: int, n_held: int) -> dict:
    return {
        "data": str(opts.data),
        "train_episodes": n_train,
        "held_out_episodes": n_held,
        "preset": opts.preset,
        "seed": opts.seed,
        "host": f"{platform.machine()} {torch.get_num_threads()} threads",
        "torch": torch.__version__,
    }


def _require(ckpt: Path, module: str, command: str) -> None:
    try:
        modules = read_manifest(ckpt)["modules"]
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; run `{command}` first") from exc
    if module not in modules:
        raise CheckpointError(f"{ckpt}: the bundle has no {module} module; run `{command}` first")


def train_codec(opts: TrainOptions) -> TrainResult:
    preset = presets.CODEC[opts.preset]
    from vidplan_server.data.reader import EpisodeDataset

    n = len(EpisodeDataset(opts.data))
    train_idx, held_idx = split_episodes(n, opts.held_out_fraction, opts.seed)
    size = preset.model.image_size
    train_eps = load_episodes(opts.data, train_idx, size, opts.progress)
    held_eps = load_episodes(opts.data, held_idx or train_idx[:1], size, opts.progress)
    stage = CodecStage(preset.model, CodecTrainConfig(), train_eps, held_eps)
    return train(
        stage,
        _loop(preset.loop, opts),
        opts.out,
        resume=opts.resume,
        device=pick_device(opts.device),
        progress=opts.progress,
        extra_meta=_meta(opts, len(train_idx), len(held_idx)),
    )


def _windows(opts: TrainOptions, history: int, horizon: int, stride: int, stats=None, branches: tuple[Path, ...] = ()):
    """Latent windows (train, held-out), the action stats of the training episodes, the episode counts and
    the (train, held-out) episodes themselves (without frames). ``branches``: branch folders (``vidplan sim
    branches``) whose windows are added, their shards split into training and held-out like the episodes."""
    from vidplan_server.data.reader import EpisodeDataset

    codec = load_codec(opts.out)
    n = len(EpisodeDataset(opts.data))
    train_idx, held_idx = split_episodes(n, opts.held_out_fraction, opts.seed)
    held_idx = held_idx or train_idx[:1]
    device = pick_device(opts.device)
    eps = load_episodes(opts.data, sorted(set(train_idx) | set(held_idx)), progress=opts.progress, images=False)
    by_index = {ep.index: ep for ep in eps}
    train_eps, held_eps = [by_index[k] for k in train_idx], [by_index[k] for k in held_idx]
    phases = {ep.index: ep.index % stride for ep in eps}
    latents = cached_latents(
        codec,
        opts.out / "codec.safetensors",
        eps,
        opts.data,
        opts.out / "training" / "latents",
        device,
        opts.progress,
        stride=stride,
        phases=[phases[ep.index] for ep in eps],
    )
    by_latent = {ep.index: z for ep, z in zip(eps, latents, strict=True)}
    if stats is None:
        stats = fit_action_stats(np.concatenate([ep.action for ep in train_eps]))
    norm = ActionNormalizer(stats)

    def build(episodes):
        acts = [norm.normalize(torch.from_numpy(ep.action)) for ep in episodes]
        return LatentWindows.build(
            [by_latent[ep.index] for ep in episodes],
            acts,
            history,
            horizon,
            stride,
            [phases[ep.index] for ep in episodes],
        )

    train_w, held_w = build(train_eps), build(held_eps)
    for folder in branches:
        from vidplan_server.data.branches import branch_manifest, shard_files
        from vidplan_server.data.windows import branch_windows

        files = shard_files(folder)
        recorded = branch_manifest(folder).get("frame_stride")
        if recorded != stride:
            raise DatasetError(
                f"--extra-data {folder}: recorded at frame stride {recorded}, the world model uses {stride}"
            )
        b_train, b_held = split_episodes(len(files), opts.held_out_fraction, opts.seed)
        parts = [
            branch_windows(
                codec,
                opts.out / "codec.safetensors",
                [files[i] for i in idx],
                opts.out / "training" / "latents",
                device,
                norm.normalize,
                history,
                horizon,
                opts.progress,
            )
            if idx
            else None
            for idx in (b_train, b_held)
        ]
        # Decided: branch windows are repeated until they are about half of the windows (of training batches and
        # of the held-out evaluation set): they are the only windows whose future the history does not predict,
        # and at their natural share (~1 in 9) a run learned nothing from them (action gain -0.005 at step 500).
        train_w = _mix(train_w, parts[0])
        held_w = _mix(held_w, parts[1])
    return train_w, held_w, stats, (len(train_idx), len(held_idx)), (train_eps, held_eps)


def _mix(windows: LatentWindows, branch: LatentWindows | None) -> LatentWindows:
    """``windows`` plus ``branch`` repeated to about as many windows as ``windows`` has (at least once)."""
    if branch is None or len(branch) == 0:
        return windows
    return LatentWindows.concat([windows, branch.repeat(max(1, round(len(windows) / len(branch))))])


def _noise_fields(noise: tuple[float, float] | None) -> dict[str, float]:
    return {} if noise is None else {"p_mean": noise[0], "p_std": noise[1]}


def world_init(init_from: Path, action_deltas: bool = False) -> tuple[WorldConfig, dict[str, torch.Tensor]]:
    """The world config and weights a run starts from: the bundle's, with ``action_deltas`` switched on (if
    asked) by zero weights for the new inputs, so the network computes exactly the bundle's function."""
    denoiser, config = load_denoiser(init_from)
    weights = denoiser.state_dict()
    if action_deltas and not config.net.action_deltas:
        config = replace(config, net=replace(config.net, action_deltas=True))
        w = weights["net.action_embed.0.weight"]
        weights["net.action_embed.0.weight"] = torch.cat([w, torch.zeros_like(w)], 1)
    return config, weights


def train_world(
    opts: TrainOptions,
    history: int = 2,
    horizon: int = 5,
    frame_stride: int = 3,
    init_from: Path | None = None,
    branches: tuple[Path, ...] = (),
    action_deltas: bool = False,
    residual: bool = False,
    action_maps: int = 0,
    noise: tuple[float, float] | None = None,
) -> TrainResult:
    """The EDM video model on windows of ``opts.data``.

    ``init_from``: a bundle whose world module (weights, architecture, action statistics) the run starts from --
    a fine-tune, e.g. longer training or new data; its codec must be the one in ``opts.out`` (the latent space the
    weights predict in). ``action_deltas``: the network also embeds each frame's motion
    (``VideoNetConfig.action_deltas``); from an ``init_from`` bundle without it, the new inputs' weights start at
    zero, so training starts from the bundle's function. ``residual``: the denoiser models the change from the
    current frame (``EDMConfig.residual``; sigma_data is then the std of that change); ``action_maps``: spatial
    action-map channels (``VideoNetConfig.action_maps``); these two only for a fresh run. ``noise``: (p_mean,
    p_std) of the training noise, ln sigma ~ N(p_mean, p_std^2) (default EDM's (-1.2, 1.2)); for a fresh run or,
    on ``resume``, from the step reached on (the run's config is rewritten)."""
    _require(opts.out, "codec", f"vidplan train codec --data {opts.data} --out {opts.out}")
    preset = presets.WORLD[opts.preset]
    net = replace(preset.net, history=history, horizon=horizon, action_deltas=action_deltas, action_maps=action_maps)
    state = opts.out / "training" / "world" / "state.json"
    init_weights = None
    if init_from is not None and not (opts.resume and state.exists()):
        _require(init_from, "world", f"vidplan train world --out {init_from}")
        if (Path(init_from) / "codec.safetensors").read_bytes() != (opts.out / "codec.safetensors").read_bytes():
            raise CheckpointError(
                f"--init-from {init_from}: its codec differs from {opts.out}'s; the world "
                "weights predict in their own codec's latent space (copy that codec first)"
            )
        config, init_weights = world_init(init_from, action_deltas)
        if noise is not None:
            config = replace(config, edm=replace(config.edm, **_noise_fields(noise)))
        train_w, held_w, _, counts, _ = _windows(
            opts, config.net.history, config.net.horizon, config.frame_stride, config.actions, branches
        )
    elif opts.resume and state.exists():
        # Resuming: keep the statistics the run started with, whatever the dataset holds now.
        config = load_config(opts.out, "world", WorldConfig)
        if noise is not None:
            config = replace(config, edm=replace(config.edm, **_noise_fields(noise)))
        train_w, held_w, _, counts, _ = _windows(
            opts, config.net.history, config.net.horizon, config.frame_stride, config.actions, branches
        )
    else:
        train_w, held_w, stats, counts, _ = _windows(opts, history, horizon, frame_stride, branches=branches)
        if residual:  # the std of the change from the current frame, over (up to) 2000 windows
            hist, _, fut = train_w.gather(train_w.spread(2000), torch.device("cpu"))
            sigma_data = float((fut - hist[:, -1:]).std())
        else:
            sigma_data = float(train_w.latents[train_w.index["future"].unique()].float().std())
        config = WorldConfig(
            actions=stats,
            net=net,
            frame_stride=frame_stride,
            edm=EDMConfig(sigma_data=round(sigma_data, 4), residual=residual, **_noise_fields(noise)),
        )
    stage = WorldStage(config, train_w, held_w)
    if init_weights is not None:
        stage.model.load_state_dict(init_weights)
    return train(
        stage,
        _loop(preset.loop, opts),
        opts.out,
        resume=opts.resume,
        device=pick_device(opts.device),
        progress=opts.progress,
        extra_meta={
            **_meta(opts, *counts),
            "windows": len(train_w),
            "init_from": str(init_from) if init_from else None,
            "branches": [str(b) for b in branches],
        },
    )


def train_flowmap(opts: TrainOptions, branches: tuple[Path, ...] = ()) -> TrainResult:
    _require(opts.out, "world", f"vidplan train world --data {opts.data} --out {opts.out}")
    denoiser, world = load_denoiser(opts.out)
    train_w, held_w, _, counts, _ = _windows(
        opts, world.net.history, world.net.horizon, world.frame_stride, world.actions, branches
    )
    stage = FlowMapStage(FlowConfig(world=world), denoiser, train_w, held_w)
    return train(
        stage,
        _loop(presets.FLOWMAP[opts.preset], opts),
        opts.out,
        resume=opts.resume,
        device=pick_device(opts.device),
        progress=opts.progress,
        extra_meta={**_meta(opts, *counts), "windows": len(train_w), "branches": [str(b) for b in branches]},
    )


# ------------------------------------------------------------------------------------------- heads
def train_uq(opts: TrainOptions, flow_steps: int = 1, branches: tuple[Path, ...] = ()) -> TrainResult:
    """UQ head on the flow map's own ``flow_steps``-step samples of ``opts.data`` (a calibration dataset the
    world model was not trained on) and of ``branches`` folders (branched from such a dataset: the errors of
    the planner's own proposals), then the heatmap colour basis of the bundle's codec."""
    _require(opts.out, "flow_map", f"vidplan train flowmap --data TRAIN_DATA --out {opts.out}")
    flow_map, flow_cfg = load_flow_map(opts.out)
    world = flow_cfg.world
    device = pick_device(opts.device)
    train_w, held_w, _, counts, _ = _windows(
        opts, world.net.history, world.net.horizon, world.frame_stride, world.actions, branches
    )
    cache = opts.out / "training" / "rollouts"
    flow_file = opts.out / "flow_map.safetensors"
    preds = [
        flow_rollouts(flow_map, flow_file, w, flow_steps, cache, device, seed=opts.seed + i, progress=opts.progress)
        for i, w in enumerate((train_w, held_w))
    ]
    preset = presets.UQ[opts.preset]
    net = replace(preset.net, latent_channels=world.net.latent_channels, frames=world.net.horizon)
    config = UQHeadConfig(net=net, history=world.net.history, flow_steps=flow_steps)
    stage = UQStage(config, (train_w, preds[0]), (held_w, preds[1]))
    result = train(
        stage,
        _loop(preset.loop, opts),
        opts.out,
        resume=opts.resume,
        device=device,
        progress=opts.progress,
        extra_meta={**_meta(opts, *counts), "windows": len(train_w), "branches": [str(b) for b in branches]},
    )
    codec = load_codec(opts.out).to(device)
    basis = fit_colormap(codec)
    save_module(opts.out, "colormap", basis, basis.config, {"codec": "codec.safetensors"})
    return result


def train_value(
    opts: TrainOptions, gamma: float = 0.99, flow_steps: int = 1, extra_data: tuple[Path, ...] = ()
) -> TrainResult:
    """Value head on windows of ``opts.data`` (the training dataset) and any ``extra_data`` folders (each split
    into training and held-out episodes the same way), half of each batch on flow-map samples."""
    _require(opts.out, "flow_map", f"vidplan train flowmap --data {opts.data} --out {opts.out}")
    if not 0.0 < gamma <= 1.0:
        raise CheckpointError(f"--gamma must be in (0, 1], got {gamma}")
    flow_map, flow_cfg = load_flow_map(opts.out)
    world = flow_cfg.world

    def returns(episodes) -> torch.Tensor:
        return torch.cat([discounted_returns(len(ep.action), ep.success, gamma) for ep in episodes])

    train_parts, held_parts, n_train, n_held, successes = [], [], 0, 0, 0
    for data in (opts.data, *extra_data):
        train_w, held_w, _, counts, (train_eps, held_eps) = _windows(
            replace(opts, data=Path(data)), world.net.history, world.net.horizon, world.frame_stride, world.actions
        )
        train_parts.append(ValueData(train_w, returns(train_eps)))
        held_parts.append(ValueData(held_w, returns(held_eps)))
        n_train, n_held = n_train + counts[0], n_held + counts[1]
        successes += sum(ep.success for ep in train_eps)

    def merge(parts: list[ValueData]) -> ValueData:
        return ValueData(LatentWindows.concat([p.windows for p in parts]), torch.cat([p.returns for p in parts]))

    preset = presets.VALUE[opts.preset]
    net = replace(preset.net, latent_channels=world.net.latent_channels, frames=world.net.horizon)
    config = ValueHeadConfig(net=net, gamma=gamma)
    train_set = merge(train_parts)
    stage = ValueStage(config, flow_map, flow_steps, train_set, merge(held_parts))
    meta = {
        **_meta(opts, n_train, n_held),
        "extra_data": [str(d) for d in extra_data],
        "windows": len(train_set.windows),
        "train_successes": int(successes),
        "flow_steps": flow_steps,
    }
    return train(
        stage,
        _loop(preset.loop, opts),
        opts.out,
        resume=opts.resume,
        device=pick_device(opts.device),
        progress=opts.progress,
        extra_meta=meta,
    )


def train_progress(
    opts: TrainOptions,
    flow_steps: int = 1,
    stage: str = "progress",
    extra_data: tuple[Path, ...] = (),
    captions: Path | None = None,
) -> TrainResult:
    """Progress head (``stage`` "progress") or target locator ("locator"), both in
    :mod:`vidplan_server.training.progress_stage`, on windows of ``opts.data`` and any ``extra_data`` folders (each
    split into training and held-out episodes the same way), simulator recordings with ground truth; needs the
    bundle's codec, flow map and semantic encoder (the maps they learn from are that encoder's). With a ``captions``
    folder (``vidplan sim captions`` renders with object positions) the locator trains on its renders alone
    (:func:`_train_locator_on_renders`)."""
    from vidplan_server.data.reader import EpisodeDataset
    from vidplan_server.models.semantic import load_semantic
    from vidplan_server.training.progress_stage import LocatorStage, ProgressData, ProgressStage, build_progress_data

    _require(opts.out, "flow_map", f"vidplan train flowmap --data {opts.data} --out {opts.out}")
    _require(opts.out, "semantic", f"vidplan train semantic --data {opts.data} --out {opts.out}")
    flow_map, flow_cfg = load_flow_map(opts.out)
    world = flow_cfg.world
    device = pick_device(opts.device)
    codec = load_codec(opts.out)
    semantic = load_semantic(opts.out, device=device)
    if stage == "locator" and captions is not None:
        return _train_locator_on_renders(opts, captions, codec, semantic, device, world.net.latent_channels)

    def data(folder: Path, windows: LatentWindows, episodes) -> ProgressData:
        dataset = EpisodeDataset(folder)
        rows, offsets = 0, []
        with_truth = []
        for ep in episodes:
            gt = dataset.load_episode(ep.index, images=False, ground_truth=True).ground_truth
            if gt is None:
                raise DatasetError(
                    f"{folder}: episode {ep.index} has no simulator ground truth (object poses); the progress "
                    "head and the locator train on recordings from `vidplan sim record`"
                )
            with_truth.append(_Truth(ep.instruction, ep.cartesian_position, gt))
            offsets.append(rows)
            rows += len(ep.action)
        cache = opts.out / "training" / "progress_data"
        files = (opts.out / "codec.safetensors", opts.out / "semantic.safetensors")
        return build_progress_data(windows, with_truth, offsets, codec, semantic, device, opts.progress, cache, files)

    train_parts, held_parts, n_train, n_held, n_windows = [], [], 0, 0, 0
    for folder in (opts.data, *extra_data):
        train_w, held_w, _, counts, (train_eps, held_eps) = _windows(
            replace(opts, data=Path(folder)), world.net.history, world.net.horizon, world.frame_stride, world.actions
        )
        train_parts.append(data(Path(folder), train_w, train_eps))
        held_parts.append(data(Path(folder), held_w, held_eps))
        n_train, n_held, n_windows = n_train + counts[0], n_held + counts[1], n_windows + len(train_w)
    train_data, held_data = ProgressData.concat(train_parts), ProgressData.concat(held_parts)
    preset = presets.PROGRESS[opts.preset]
    h, w = codec.config.view_latent_size
    shape = dict(latent_channels=world.net.latent_channels, views=len(codec.config.views), view_size=(h, w))
    if stage == "locator":
        from vidplan_server.training.locator_data import LocatorData

        train_loc, held_loc = LocatorData.from_progress(train_data), LocatorData.from_progress(held_data)
        run = LocatorStage(_locator_config(preset, shape, train_loc, "codec"), train_loc, held_loc)
    else:
        config = replace(preset.model, **shape, horizon_steps=world.net.horizon * world.frame_stride)
        run = ProgressStage(config, flow_map, flow_steps, train_data, held_data)
    return train(
        run,
        _loop(preset.loop, opts),
        opts.out,
        resume=opts.resume,
        device=device,
        progress=opts.progress,
        extra_meta={
            **_meta(opts, n_train, n_held),
            "extra_data": [str(d) for d in extra_data],
            "windows": n_windows,
            "flow_steps": flow_steps,
        },
    )


def _locator_config(preset, shape: dict, train_set, map_source: str):
    """The locator's config: the preset's network for ``shape`` (latent channels, views, view size), its output
    normalised by the training set's object positions (:class:`~vidplan_server.training.locator_data.LocatorData`)."""
    from vidplan_server.models.progress import LocatorConfig

    p = train_set.positions[train_set.valid]  # (n, 3)
    mean, scale = p.mean(0), p.std(0).clamp_min(1e-3)
    return LocatorConfig(
        **{k: getattr(preset.model, k) for k in ("channels", "hidden")},
        **shape,
        horizon_steps=0,
        position_mean=tuple(float(v) for v in mean),
        position_scale=tuple(float(v) for v in scale),
        map_source=map_source,
    )


def _train_locator_on_renders(
    opts: TrainOptions, captions: Path, codec, semantic, device, latent_channels: int
) -> TrainResult:
    """The target locator on captioned renders alone, reading the maps over the frames (``map_source`` "frames",
    :mod:`vidplan_server.training.locator_data`); every 20th shard is held out (scenes never cross a shard)."""
    from vidplan_server.sim.captions import load_captions
    from vidplan_server.training.locator_data import cached_caption_locator_data, split_renders
    from vidplan_server.training.progress_stage import LocatorStage

    renders = load_captions(captions, progress=opts.progress)
    data = cached_caption_locator_data(
        renders,
        codec,
        semantic,
        device,
        opts.out / "training" / "progress_data",
        (opts.out / "codec.safetensors", opts.out / "semantic.safetensors"),
        opts.progress,
        map_source="frames",
    )
    train_set, held_out = split_renders(data, renders.images_per_shard)
    preset = presets.PROGRESS[opts.preset]
    shape = dict(
        latent_channels=latent_channels, views=len(codec.config.views), view_size=codec.config.view_latent_size
    )
    return train(
        LocatorStage(_locator_config(preset, shape, train_set, "frames"), train_set, held_out),
        _loop(preset.loop, opts),
        opts.out,
        resume=opts.resume,
        device=device,
        progress=opts.progress,
        extra_meta={
            **{k: v for k, v in _meta(opts, 0, 0).items() if k not in ("data", "train_episodes", "held_out_episodes")},
            "captions": str(captions),
            "train_images": len(train_set),
            "held_out_images": len(held_out),
        },
    )


@dataclass(frozen=True)
class _Truth:
    """What the progress stage reads of an episode: its instruction, robot poses and simulator ground truth."""

    instruction: str
    cartesian_position: np.ndarray
    ground_truth: object


def semantic_frames(
    data: Path, indices: list[int], image_size: tuple[int, int], grid: int, frame_step: int, progress: bool = True
) -> SemanticFrames:
    """Every ``frame_step``-th step of each episode, all views, with the target mask's coverage per patch."""
    from vidplan_server.data.reader import EpisodeDataset

    dataset = EpisodeDataset(data)
    images, masks, texts, instructions = [], [], [], {}
    for k in tqdm(indices, desc=f"load {Path(data).name}", disable=not progress, leave=False):
        ep = dataset.load_episode(k, images=True, ground_truth=True)
        if ep.ground_truth is None:
            raise DatasetError(
                f"{data}: episode {k} has no ground-truth target masks (semantic training "
                "needs simulator episodes from `vidplan sim record`)"
            )
        t = instructions.setdefault(ep.language_instruction, len(instructions))
        for cam in CAMERA_NAMES:
            frames = ep.images[cam][::frame_step]
            mask = ep.ground_truth.target_masks[cam][::frame_step].astype(np.float32)
            if frames.shape[1:3] != tuple(image_size):
                frames = np.stack([cv2.resize(f, image_size[::-1], interpolation=cv2.INTER_AREA) for f in frames])
            cover = np.stack([cv2.resize(m, (grid, grid), interpolation=cv2.INTER_AREA) for m in mask])
            images.append(frames)
            masks.append(cover.astype(np.float16))
            texts.append(np.full(len(frames), t))
    return SemanticFrames(np.concatenate(images), np.concatenate(masks), np.concatenate(texts), list(instructions))


def train_semantic_captions(opts: TrainOptions, captions: Path, frame_step: int = 4, cfg=None) -> TrainResult:
    """The semantic encoder on ``vidplan sim captions`` renders (+ ``train``-split robot frames of ``opts.data``,
    ``cfg.robot_share`` of each batch), with the vocabulary of every simulator word; see
    :mod:`vidplan_server.training.caption_stage`. The codec of the augmentation is ``opts.out``'s (the bundle
    the planner will decode with), else the default bundle's."""
    from dataclasses import asdict

    from vidplan_server.data.reader import EpisodeDataset
    from vidplan_server.models.checkpoint import DEFAULT_CHECKPOINT
    from vidplan_server.sim.caption_text import simulator_vocabulary
    from vidplan_server.sim.captions import load_captions
    from vidplan_server.training.caption_stage import (
        CaptionSemanticStage,
        CaptionTrainConfig,
        CaptionViews,
        attach_codec,
        split_images,
    )

    cfg = cfg or CaptionTrainConfig()
    preset = presets.SEMANTIC[opts.preset]
    data = load_captions(captions, opts.progress)
    train_img, held_img = split_images(data, opts.held_out_fraction)
    held_img = held_img[: cfg.eval_images]
    vocab = set(simulator_vocabulary())
    robot = robot_held = None
    n_train = n_held = 0
    if cfg.robot_share > 0:
        dataset = EpisodeDataset(opts.data)
        train_idx, held_idx = split_episodes(len(dataset), opts.held_out_fraction, opts.seed)
        held_idx = held_idx or train_idx[:1]
        n_train, n_held = len(train_idx), len(held_idx)
        size, grid = preset.model.image_size, preset.model.image_size[0] // 4
        robot = semantic_frames(opts.data, train_idx, size, grid, frame_step, opts.progress)
        robot_held = semantic_frames(opts.data, held_idx, size, grid, frame_step, opts.progress)
        vocab |= {w for t in robot.instructions for w in words(t)}
    config = replace(preset.model, vocab=tuple(sorted(vocab)))
    codec_ckpt = opts.out if (opts.out / "codec.safetensors").is_file() else DEFAULT_CHECKPOINT
    codec = load_codec(codec_ckpt)
    train_v, held_v = CaptionViews.from_captions(data, train_img), CaptionViews.from_captions(data, held_img)
    cache = opts.out / "training" / "semantic_codec"
    attach_codec(train_v, codec, codec_ckpt / "codec.safetensors", cfg.codec_fraction, cache, opts.seed, opts.progress)
    attach_codec(held_v, codec, codec_ckpt / "codec.safetensors", 1.0, cache, opts.seed, opts.progress)
    stage = CaptionSemanticStage(config, train_v, held_v, cfg, robot, robot_held)
    meta = {
        **_meta(opts, n_train, n_held),
        "captions": str(captions),
        "caption_images": len(train_img),
        "caption_held_out_images": len(held_img),
        "robot_frames": len(robot.images) if robot else 0,
        "frame_step": frame_step,
        "codec_from": str(codec_ckpt),
        "caption_training": asdict(cfg),
    }
    return train(
        stage,
        _loop(preset.loop, opts),
        opts.out,
        resume=opts.resume,
        device=pick_device(opts.device),
        progress=opts.progress,
        extra_meta=meta,
    )


def train_semantic(opts: TrainOptions, frame_step: int = 4) -> TrainResult:
    from vidplan_server.data.reader import EpisodeDataset

    preset = presets.SEMANTIC[opts.preset]
    dataset = EpisodeDataset(opts.data)
    train_idx, held_idx = split_episodes(len(dataset), opts.held_out_fraction, opts.seed)
    held_idx = held_idx or train_idx[:1]
    # The vocabulary is rebuilt from the same training episodes on --resume, so it is identical.
    vocab = sorted(
        {
            w
            for k in train_idx
            for w in words(dataset.load_episode(k, images=False, ground_truth=False).language_instruction)
        }
    )
    config = replace(preset.model, vocab=tuple(vocab))
    grid = config.image_size[0] // 4
    train_f = semantic_frames(opts.data, train_idx, config.image_size, grid, frame_step, opts.progress)
    held_f = semantic_frames(opts.data, held_idx, config.image_size, grid, frame_step, opts.progress)
    stage = SemanticStage(config, train_f, held_f)
    return train(
        stage,
        _loop(preset.loop, opts),
        opts.out,
        resume=opts.resume,
        device=pick_device(opts.device),
        progress=opts.progress,
        extra_meta={
            **_meta(opts, len(train_idx), len(held_idx)),
            "frames": len(train_f.images),
            "frame_step": frame_step,
        },
    )


# ------------------------------------------------------------------------------------------ policy
def train_policy(
    opts: TrainOptions,
    extra: tuple[Path, ...] = (),
    pooling: str | None = None,
    target_map: bool = False,
    init: Path | None = None,
    target_aux: float | None = None,
    init_module: str = "policy",
) -> TrainResult:
    """The behaviour-cloning policy on the successful nominal episodes of ``opts.data`` (a ``train`` split), plus
    the ``extra`` folders, training only (the held-out samples stay those of ``opts.data``): DAgger folders
    (``vidplan sim dagger``, every labelled step) and more recordings (their successful nominal episodes, all of
    them). A DAgger round continues the run: ``--resume --steps`` with the folders added.

    ``target_map``: the goal policy (module ``goal_policy``, ``models/policy.py``), its samples with the
    instruction's relevance maps from the semantic encoder of ``init`` (else of ``opts.out``). ``init``: warm start
    from that bundle's ``policy`` (its vocabulary and normalisation kept; with ``target_map``, the map channel
    starts at zero so it starts as that policy); ``init_module="goal_policy"`` with ``target_map``: from that
    bundle's goal policy instead, as it is (to fine-tune the goal policy on new data). ``target_aux``: the weight of
    the auxiliary where-is-the-object loss of a fresh run (None: the preset's); a warm start or a resumed run keeps
    its own."""
    from vidplan_server.data.reader import EpisodeDataset
    from vidplan_server.models.policy import PolicyConfig, fit_delta_scale, load_policy, with_target_map
    from vidplan_server.training.policy_stage import PolicyData, PolicyStage, add_target_maps, policy_data

    preset = presets.POLICY[opts.preset]
    dataset = EpisodeDataset(opts.data)
    train_idx, held_idx = split_episodes(len(dataset), opts.held_out_fraction, opts.seed)
    held_idx = held_idx or train_idx[:1]
    name = "goal_policy" if target_map else "policy"
    state = opts.out / "training" / name / "state.json"
    resuming = opts.resume and state.exists()
    warm = None
    if resuming:
        # Resuming: the vocabulary and normalisation the run started with.
        config = load_config(opts.out, name, PolicyConfig)
    elif init is not None:
        if init_module == "goal_policy" and not target_map:
            raise CheckpointError("--init-module goal_policy starts a goal policy: add --target-map")
        if init_module not in read_manifest(init)["modules"]:
            raise CheckpointError(f"--init-from {init}: the bundle has no {init_module} module")
        warm = load_policy(init, init_module)
        if pooling is not None and pooling != warm.config.pooling:
            raise CheckpointError(f"--pooling {pooling}: the --init policy pools with {warm.config.pooling}")
        if target_aux is not None and target_aux != warm.config.target_aux:
            raise CheckpointError(f"--target-aux {target_aux}: the --init policy has {warm.config.target_aux}")
        warm = with_target_map(warm) if target_map and not warm.config.target_map else warm
        config = warm.config
    else:
        config = preset.model if pooling is None else replace(preset.model, pooling=pooling)
        config = replace(config, target_map=target_map)
        config = config if target_aux is None else replace(config, target_aux=target_aux)
    semantic = None
    if target_map:
        from vidplan_server.models.semantic import load_semantic

        source = init if init is not None else opts.out
        if "semantic" not in read_manifest(source)["modules"]:
            raise CheckpointError(f"{source}: a --target-map policy needs the bundle's semantic module for its maps")
        semantic = load_semantic(source, None, torch.device("cpu"))
    train_d = policy_data(opts.data, train_idx, config.image_size, config.chunk, opts.progress)
    held_d = policy_data(opts.data, held_idx, config.image_size, config.chunk, opts.progress)
    demos = len(train_d)
    if extra:
        from vidplan_server.training.dagger import MANIFEST, dagger_samples

        def samples(folder: Path) -> PolicyData:
            if (Path(folder) / MANIFEST).exists():
                return dagger_samples(folder, config.image_size, config.chunk, opts.progress)
            n = len(EpisodeDataset(folder))
            return policy_data(folder, list(range(n)), config.image_size, config.chunk, opts.progress)

        train_d = PolicyData.concat([train_d, *(samples(d) for d in extra)])
    if semantic is not None:
        train_d = add_target_maps(train_d, semantic, progress=opts.progress)
        held_d = add_target_maps(held_d, semantic, progress=opts.progress)
    if not resuming and warm is None:
        vocab = sorted({w for t in train_d.instructions for w in words(t)})
        pos = train_d.state[:, :3]
        config = replace(
            config,
            vocab=tuple(vocab),
            delta_scale=fit_delta_scale(train_d.chunk, train_d.state),
            position_mean=tuple(float(v) for v in pos.mean(0)),
            position_std=tuple(float(max(v, 1e-3)) for v in pos.std(0)),
        )
    stage = PolicyStage(config, train_d, held_d, model=warm)
    return train(
        stage,
        _loop(preset.loop, opts),
        opts.out,
        resume=opts.resume,
        device=pick_device(opts.device),
        progress=opts.progress,
        extra_meta={
            **_meta(opts, len(train_idx), len(held_idx)),
            "samples": len(train_d),
            "demonstration_samples": demos,
            "extra_data": [str(d) for d in extra],
            "instructions": len(train_d.instructions),
            **({"init": str(init), "init_module": init_module} if init is not None else {}),
            **({"semantic": str(init if init is not None else opts.out)} if target_map else {}),
        },
    )
