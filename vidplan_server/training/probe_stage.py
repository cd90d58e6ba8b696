"""``vidplan train c3`` and ``vidplan train squbed``: the other two uncertainty methods, on the same calibration
data as the 30-bin UQ head (``train uq``).

C3 probe (:mod:`vidplan_server.models.c3_probe`): every batch rolls calibration windows out with the bundle's
frozen flow map (``flow_steps``, fresh noise per batch, ``no_grad``) while a forward hook keeps the backbone's
penultimate features and embedding; the targets are ``|prediction - true future latent| <= eps`` per element
(FSC: the config's eps; CS-BC: eps uniform in ``[eps_min, eps_max]``, drawn per element), the loss BCE or Brier.
Nothing of the world model is trained or receives a gradient. Exported as module ``c3_fsc`` or ``c3_cs``.

S-QUBED (:mod:`vidplan_server.models.squbed`) needs no training; ``train squbed`` runs it on calibration
windows and fits the two-number map from its per-frame total entropy to P(frame mean error <= tau), tau the
calibration split's median frame error. Exported as module ``squbed``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vidplan_server.data.windows import LatentWindows
from vidplan_server.evaluation.calibration import calibration_errors
from vidplan_server.models.c3_probe import C3Probe, C3ProbeConfig, rollout_with_features, scoring_loss
from vidplan_server.models.checkpoint import save_module
from vidplan_server.models.flow_map import FlowMap
from vidplan_server.models.squbed import SqubedCalibration, SqubedConfig, SqubedModuleConfig, estimate
from vidplan_server.models.world_model import WorldModel, load_flow_map
from vidplan_server.training.loop import LoopConfig, Stage, TrainResult, pick_device, train

EVAL_WINDOWS = 48
EVAL_THRESHOLDS = (0.1, 0.25, 0.5, 1.0)
# Decided for the shared 2-core CPU: a probe of ~50 k weights on a frozen backbone converges in a few hundred
# steps (the bins head's schedule is 1200 steps of a 0.5 M-weight U-Net).
LOOP = LoopConfig(steps=400, batch_size=16, lr=1e-3, warmup_steps=20, eval_every=100, save_every=100)


class C3Stage(Stage):
    def __init__(self, config: C3ProbeConfig, flow_map: FlowMap, train: LatentWindows, held_out: LatentWindows):
        self.config = config
        self.name = config.module_name
        self.model = C3Probe(config)
        self.flow_map = flow_map.eval().requires_grad_(False)
        self._flow_device: torch.device | None = None
        self.train_set = train
        self.held_out = held_out

    def _rollout(self, windows: LatentWindows, idx: torch.Tensor, device, generator):
        if self._flow_device != device:
            self.flow_map.to(device)
            self._flow_device = device
        hist, act, fut = windows.gather(idx, device)
        noise = torch.randn(fut.shape, generator=generator).to(device)
        pred, feats, emb = rollout_with_features(self.flow_map, hist, act, self.config.flow_steps, noise)
        return feats, emb, (pred - fut).abs()

    def batch(self, generator, batch_size, device):
        idx = torch.randint(len(self.train_set), (batch_size,), generator=generator)
        feats, emb, err = self._rollout(self.train_set, idx, device, generator)
        c = self.config
        if c.method == "fsc":
            eps = torch.full_like(err, c.eps)
        else:
            eps = c.eps_min + (c.eps_max - c.eps_min) * torch.rand(err.shape, generator=generator).to(device)
        return feats, emb, eps, err <= eps

    def loss(self, model: C3Probe, batch, generator):
        feats, emb, eps, outcome = batch
        loss = scoring_loss(model(feats, emb, eps), outcome, self.config.loss).mean()
        return loss, {}

    def evaluate(self, model: C3Probe, device):
        g = torch.Generator().manual_seed(0)
        idx = self.held_out.spread(EVAL_WINDOWS)
        thresholds = (self.config.eps,) if self.config.method == "fsc" else EVAL_THRESHOLDS
        conf = {e: [] for e in thresholds}
        hits = {e: [] for e in thresholds}
        for chunk in idx.split(16):
            feats, emb, err = self._rollout(self.held_out, chunk, device, g)
            for e, q in model.probabilities(feats, emb, thresholds).items():
                conf[e].append(q.flatten().cpu())
                hits[e].append((err <= e).flatten().float().cpu())
        out = {}
        for e in thresholds:
            q, y = torch.cat(conf[e]), torch.cat(hits[e])
            out[f"ece_{e:g}"] = calibration_errors(q, y)[0]
            out[f"brier_{e:g}"] = float(((q - y) ** 2).mean())
        return out

    def export(self, model, ckpt: Path, meta: dict) -> None:
        save_module(ckpt, self.config.module_name, model, self.config, meta)


def _calibration_windows(opts, flow_cfg):
    """(train, held-out) windows of the calibration data ``opts.data``, and the episode counts: the same split
    and latents as ``train uq`` (:func:`vidplan_server.training.commands._windows`)."""
    from vidplan_server.training import commands

    world = flow_cfg.world
    train_w, held_w, _, counts, _ = commands._windows(
        opts, world.net.history, world.net.horizon, world.frame_stride, world.actions
    )
    return train_w, held_w, counts


def train_c3(opts, method: str = "cs", loss: str = "bce", eps: float = 0.5, flow_steps: int = 1) -> TrainResult:
    """The C3 probe (``method`` fsc or cs, scoring rule ``loss``) on ``opts.data`` (a calibration recording the
    world model never saw) into the bundle ``opts.out`` (which must hold codec and flow map)."""
    from vidplan_server.training import commands

    commands._require(opts.out, "flow_map", f"vidplan train flowmap --data TRAIN_DATA --out {opts.out}")
    flow_map, flow_cfg = load_flow_map(opts.out)
    from vidplan_server.models.c3_probe import probe_config_for

    config = probe_config_for(flow_map, method=method, loss=loss, eps=eps, flow_steps=flow_steps)
    train_w, held_w, counts = _calibration_windows(opts, flow_cfg)
    stage = C3Stage(config, flow_map, train_w, held_w)
    loop = commands._loop(LOOP, opts)
    return train(
        stage,
        loop,
        opts.out,
        resume=opts.resume,
        device=pick_device(opts.device),
        progress=opts.progress,
        extra_meta={**commands._meta(opts, *counts), "windows": len(train_w)},
    )


def squbed_frames(
    model: WorldModel,
    windows: LatentWindows,
    idx: torch.Tensor,
    cfg: SqubedConfig,
    seed: int = 0,
    batch: int = 4,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame S-QUBED total entropy and mean |latent error| of the ``flow_steps``-step sample with the
    window's own actions (seeded noise), each (len(idx) * H,)."""
    g = torch.Generator().manual_seed(seed)
    totals, errors = [], []
    for i, chunk in enumerate(tqdm(idx.split(batch), desc="s-qubed", disable=not progress, leave=False)):
        hist, act, fut = windows.gather(chunk, model.device)
        noise = torch.randn(fut.shape, generator=g).to(model.device)
        with torch.no_grad():
            pred = model.flow_map.sample(hist, act, steps=cfg.flow_steps, noise=noise)
        raw = model.normalizer.denormalize(act)
        totals.append(estimate(model, hist, raw, cfg, seed=seed + 1 + i).total.reshape(-1))
        errors.append((pred - fut).abs().mean((2, 3, 4)).reshape(-1).cpu().numpy())
    return np.concatenate(totals), np.concatenate(errors)


def train_squbed(opts, windows: int = 96, cfg: SqubedConfig = SqubedConfig()) -> dict:
    """Fit S-QUBED's calibration map on ``windows`` training windows of the calibration data and report it on
    the held-out ones; writes module ``squbed`` into ``opts.out``. Returns the figures."""
    from vidplan_server.training import commands

    commands._require(opts.out, "flow_map", f"vidplan train flowmap --data TRAIN_DATA --out {opts.out}")
    device = pick_device(opts.device)
    model = WorldModel.load(opts.out, device)
    _, flow_cfg = load_flow_map(opts.out)
    train_w, held_w, counts = _calibration_windows(opts, flow_cfg)
    total, err = squbed_frames(model, train_w, train_w.spread(windows), cfg, opts.seed, progress=opts.progress)
    tau = float(np.median(err))
    calib = SqubedCalibration(SqubedModuleConfig(squbed=cfg, tau=round(tau, 5))).fit(total, err <= tau)
    h_total, h_err = squbed_frames(
        model, held_w, held_w.spread(max(8, windows // 4)), cfg, opts.seed + 7, progress=opts.progress
    )
    q = calib(h_total)
    y = torch.as_tensor(h_err <= tau).float()
    figures = {
        "tau": tau,
        "a": float(calib.a),
        "b": float(calib.b),
        "held_out_ece": calibration_errors(q, y)[0],
        "held_out_brier": float(((q - y) ** 2).mean()),
        "frames": int(len(total)),
    }
    save_module(
        opts.out,
        "squbed",
        calib,
        calib.config,
        {**commands._meta(opts, *counts), **figures, "windows": int(windows)},
    )
    return figures
