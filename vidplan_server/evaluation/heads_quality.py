"""``vidplan eval calibration`` and ``vidplan eval reward``: how well the UQ, value and semantic heads of a
bundle do on held-out episodes.

Calibration (per split, e.g. ``val`` and ``ood``): windows spread over the dataset's episodes are rolled
out with the bundle's flow map at the UQ head's own ``flow_steps`` (fixed seed), and the UQ head's
30-bin error distribution of every latent element is compared with the element's actual
``|prediction - true latent|``:

- ECE / MCE (10 equal-width bins) of P(error <= eps) for each eps in ``thresholds``, and of the top-bin
  confidence (probability of the most likely bin vs. whether the error fell in it). The headline
  ``ece`` / ``mce`` are the *largest* over these events (the strictest reading).
- Per predicted frame: mean normalised entropy vs. mean absolute latent error and vs. mean absolute
  pixel error of the decoded frame (in [0, 1]): Kendall tau with p-value, Pearson r.

Reward: the value head's expected value on the true latents of every window's future frames vs. the
true discounted return (Kendall tau), and AUROC of success vs. failure from the value of each
episode's final frame; the semantic reward's relevance centroid vs. the target's simulator mask on
frames where at least ``min_visible_px`` target pixels are visible (rendered frames, and the same
frames through the codec, which is what the planner scores).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from vidplan_server.data.episodes import EpisodeArrays, load_episodes
from vidplan_server.data.reader import EpisodeDataset
from vidplan_server.data.schema import CAMERA_NAMES
from vidplan_server.data.windows import LatentWindows, encode_phase
from vidplan_server.evaluation.calibration import CalibrationAccumulator, auroc, correlation, reliability_diagram
from vidplan_server.models.bins import ERROR_BINS, VALUE_BINS
from vidplan_server.models.heads import UQHead, ValueHead, discounted_returns
from vidplan_server.models.heatmaps import LatentColormap, overlay, pixel_heatmap
from vidplan_server.models.semantic import SemanticBackend
from vidplan_server.models.world_model import WorldModel


@dataclass(frozen=True)
class CalibrationConfig:
    windows: int = 256  # windows per split, spread evenly over all of its episodes
    thresholds: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)  # eps of P(|error| <= eps)
    n_bins: int = 10  # confidence bins of ECE / MCE
    batch: int = 16
    seed: int = 0


@dataclass
class SplitData:
    episodes: list[EpisodeArrays]
    latents: list[torch.Tensor]
    windows: LatentWindows


def split_data(model: WorldModel, data: Path, progress: bool = True) -> SplitData:
    """Episodes of ``data`` with frames, their latents (one phase per episode, as in training) and windows."""
    stride, T, H = model.config.frame_stride, model.history, model.horizon
    eps = load_episodes(data, image_size=model.codec.config.image_size, progress=progress)
    latents = [
        encode_phase(model.codec, ep.frames, model.device, stride, ep.index % stride)
        for ep in tqdm(eps, desc="encode", disable=not progress, leave=False)
    ]
    acts = [model.normalizer.normalize(torch.from_numpy(ep.action)) for ep in eps]
    windows = LatentWindows.build(latents, acts, T, H, stride, [ep.index % stride for ep in eps])
    return SplitData(eps, latents, windows)


def _true_frames(split: SplitData, rows: torch.Tensor) -> np.ndarray:
    """Frames (..., V, H, W, 3) uint8 at global latent rows."""
    starts = np.cumsum([0] + [len(ep.frames) for ep in split.episodes])
    flat = rows.flatten().numpy()
    e = np.searchsorted(starts, flat, side="right") - 1
    out = np.stack([split.episodes[i].frames[r - starts[i]] for i, r in zip(e, flat, strict=True)])
    return out.reshape(*rows.shape, *out.shape[1:])


@torch.no_grad()
def calibration_split(
    model: WorldModel, uq: UQHead, split: SplitData, cfg: CalibrationConfig, progress: bool = True
) -> dict:
    device = model.device
    idx = split.windows.spread(cfg.windows)
    events = {f"p_le_{eps:g}": CalibrationAccumulator(cfg.n_bins) for eps in cfg.thresholds}
    events["top_bin"] = CalibrationAccumulator(cfg.n_bins)
    g = torch.Generator().manual_seed(cfg.seed)
    ent_f, err_f, pix_f, exp_f = [], [], [], []
    for chunk in tqdm(idx.split(cfg.batch), desc="calibration", disable=not progress, leave=False):
        hist, act, fut = split.windows.gather(chunk, device)
        noise = torch.randn(fut.shape, generator=g).to(device)
        pred = model.flow_map.sample(hist, act, steps=uq.config.flow_steps, noise=noise)
        logits = uq(pred, hist)
        err = (pred - fut).abs()
        for eps in cfg.thresholds:
            events[f"p_le_{eps:g}"].add(ERROR_BINS.cdf(logits, eps), err <= eps)
        conf, top = ERROR_BINS.confidence(logits)
        events["top_bin"].add(conf, top == ERROR_BINS.index(err))
        ent = ERROR_BINS.normalized_entropy(logits)
        ent_f.append(ent.mean((2, 3, 4)).flatten().cpu())
        exp_f.append(ERROR_BINS.expected(logits).mean((2, 3, 4)).flatten().cpu())
        err_f.append(err.mean((2, 3, 4)).flatten().cpu())
        decoded = model.decode(pred).movedim(-3, -1).cpu().numpy()  # (B, H, V, h, w, 3) in [0, 1]
        truth = _true_frames(split, split.windows.index["future"][chunk]).astype(np.float32) / 255.0
        pix_f.append(torch.from_numpy(np.abs(decoded - truth).mean((2, 3, 4, 5)).reshape(-1)))
    ent_f, err_f, pix_f, exp_f = (torch.cat(v).numpy() for v in (ent_f, err_f, pix_f, exp_f))
    per_event = {name: dict(zip(("ece", "mce", "table"), acc.result(), strict=True)) for name, acc in events.items()}
    latent_corr = correlation(ent_f, err_f)
    pixel_corr = correlation(ent_f, pix_f)
    return {
        "ece": max(v["ece"] for v in per_event.values()),
        "mce": max(v["mce"] for v in per_event.values()),
        "kendall_tau": latent_corr["kendall_tau"],
        "kendall_p": latent_corr["kendall_p"],
        "pearson_r": latent_corr["pearson_r"],
        "mean_entropy": float(ent_f.mean()),
        "mean_expected_error": float(exp_f.mean()),
        "mean_abs_error": float(err_f.mean()),
        "pixel": {
            "kendall_tau": pixel_corr["kendall_tau"],
            "kendall_p": pixel_corr["kendall_p"],
            "pearson_r": pixel_corr["pearson_r"],
            "mean_abs_error": float(pix_f.mean()),
        },
        "events": per_event,
        "windows": int(len(idx)),
        "frames": int(len(ent_f)),
        "episodes": len(split.episodes),
        "flow_steps": uq.config.flow_steps,
    }


@torch.no_grad()
def heatmap_panel(
    model: WorldModel, uq: UQHead, colormap: LatentColormap, split: SplitData, window: int, seed: int = 0
) -> np.ndarray:
    """One window as an RGB image: rows = true future, prediction, latent colour map over the prediction,
    per-pixel entropy map over the prediction, |prediction - truth| (grey); columns = the H frames, each
    the three views side by side."""
    idx = torch.tensor([window])
    hist, act, fut = split.windows.gather(idx, model.device)
    noise = torch.randn(fut.shape, generator=torch.Generator().manual_seed(seed)).to(model.device)
    pred = model.flow_map.sample(hist, act, steps=uq.config.flow_steps, noise=noise)
    u = ERROR_BINS.normalized_entropy(uq(pred, hist))[0]  # (H, C, V*h, w)
    frames = (model.decode(pred)[0].movedim(-3, -1) * 255).round().byte().cpu().numpy()  # (H, V, h, w, 3)
    truth = _true_frames(split, split.windows.index["future"][idx])[0]
    latent_map = overlay(frames, colormap.render(u))
    pixel_map = overlay(frames, pixel_heatmap(u, frames.shape[1], frames.shape[2:4]))
    err = np.abs(frames.astype(np.int16) - truth.astype(np.int16)).mean(-1, keepdims=True)
    err = np.repeat(np.clip(err * 4, 0, 255).astype(np.uint8), 3, -1)
    rows = [truth, frames, latent_map, pixel_map, err]

    # (H, V, h, w, 3) -> (h, H * V * w, 3) per row, a 2-pixel gap between frames
    def strip(x):
        pad = np.pad(x, ((0, 0), (0, 0), (0, 2), (0, 2), (0, 0)), constant_values=255)
        return np.concatenate([np.concatenate(list(f), 1) for f in pad], 1)

    return np.concatenate([strip(r) for r in rows], 0)


def run_calibration(
    model: WorldModel,
    uq: UQHead,
    splits: dict[str, Path],
    out: Path,
    cfg: CalibrationConfig = CalibrationConfig(),
    progress: bool = True,
    colormap: LatentColormap | None = None,
) -> dict:
    """Evaluate every split (name -> dataset), write ``calibration.json``, one reliability PNG per split and,
    with a ``colormap``, a heatmap panel per split (``heatmaps_<split>.png``, the middle window)."""
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "config": {"windows": cfg.windows, "thresholds": list(cfg.thresholds), "n_bins": cfg.n_bins, "seed": cfg.seed},
        "splits": {},
    }
    for name, data in splits.items():
        split = split_data(model, data, progress)
        r = calibration_split(model, uq, split, cfg, progress)
        r["data"] = str(data)
        png = reliability_diagram(
            {k: v["table"] for k, v in r["events"].items()},
            out / f"reliability_{name}.png",
            f"{name}: UQ head reliability (ECE max {r['ece']:.3f})",
        )
        r["reliability_png"] = png.name
        if colormap is not None:
            panel = heatmap_panel(model, uq, colormap, split, len(split.windows) // 2, cfg.seed)
            cv2.imwrite(str(out / f"heatmaps_{name}.png"), cv2.cvtColor(panel, cv2.COLOR_RGB2BGR))
            r["heatmaps_png"] = f"heatmaps_{name}.png"
        result["splits"][name] = r
        result[name] = {k: r[k] for k in ("ece", "mce", "kendall_tau", "kendall_p", "pearson_r", "mean_entropy")}
    (out / "calibration.json").write_text(json.dumps(result, indent=1))
    return result


def format_calibration(result: dict) -> str:
    rows = [
        f"{'split':<6} {'ECE':>6} {'MCE':>6} {'tau':>6} {'p':>9} {'r':>6} {'entropy':>8} {'|err|':>6} {'tau_px':>6}"
    ]
    for name, r in result["splits"].items():
        rows.append(
            f"{name:<6} {r['ece']:6.3f} {r['mce']:6.3f} {r['kendall_tau']:6.3f} {r['kendall_p']:9.2e} "
            f"{r['pearson_r']:6.3f} {r['mean_entropy']:8.4f} {r['mean_abs_error']:6.3f} "
            f"{r['pixel']['kendall_tau']:6.3f}"
        )
        rows.append("       " + "  ".join(f"{k} {v['ece']:.3f}/{v['mce']:.3f}" for k, v in r["events"].items()))
    return "\n".join(rows)


# ------------------------------------------------------------------------------------------ reward
@dataclass(frozen=True)
class RewardEvalConfig:
    frame_step: int = 4  # semantic: every N-th step of each episode
    min_visible_px: int = 4  # semantic: frames with fewer target pixels count as "not visible"
    batch: int = 32
    views: tuple[str, ...] = field(default=CAMERA_NAMES)


@torch.no_grad()
def value_quality(
    model: WorldModel, value: ValueHead, split: SplitData, batch: int = 32, failure_modes: list[str] | None = None
) -> dict:
    """Kendall tau of expected value vs. true return over all frames; success AUROC at final frames. With the
    simulator's ``failure_modes`` (per episode), also the AUROC without ``wrong_target`` failures: the value
    head does not see the instruction, so a wrong object put in the container looks like a success to it."""
    device = model.device
    gamma = value.config.gamma
    returns = torch.cat([discounted_returns(len(ep.frames), ep.success, gamma) for ep in split.episodes])
    w = split.windows
    values = []
    for chunk in torch.arange(len(w)).split(batch):
        fut = w.latents[w.index["future"][chunk]].to(device).float()
        values.append(VALUE_BINS.expected(value(fut)).cpu())
    values = torch.cat(values)  # (N, H)
    truth = returns[w.index["future"]]
    corr = correlation(values.flatten().numpy(), truth.flatten().numpy())
    # final frame of each episode: the last window's last frame
    last = {}
    for i, e in enumerate(w.index["episode"].tolist()):
        last[e] = i
    final = np.array([float(values[i, -1]) for i in last.values()])
    success = np.array([split.episodes[e].success for e in last])
    out = {
        "value_kendall_tau": corr["kendall_tau"],
        "value_kendall_p": corr["kendall_p"],
        "value_pearson_r": corr["pearson_r"],
        "success_auroc": auroc(final[success], final[~success]),
        "episodes": len(last),
        "successes": int(success.sum()),
        "frames": int(truth.numel()),
    }
    if failure_modes is not None:
        visible = np.array([failure_modes[e] != "wrong_target" for e in last])
        out["success_auroc_without_wrong_target"] = auroc(final[success], final[~success & visible])
        out["wrong_target_failures"] = int((~visible).sum())
    return out


@torch.no_grad()
def semantic_quality(
    model: WorldModel,
    semantic: SemanticBackend,
    data: Path,
    split: SplitData,
    cfg: RewardEvalConfig,
    progress: bool = True,
) -> dict:
    dataset = EpisodeDataset(data)
    device = model.device
    hits = {"rendered": [], "decoded": []}
    views = []
    for ep in tqdm(split.episodes, desc="semantic", disable=not progress, leave=False):
        gt = dataset.load_episode(ep.index, images=False, ground_truth=True).ground_truth
        if gt is None:
            continue
        steps = np.arange(0, len(ep.frames), cfg.frame_step)
        frames = ep.frames[steps]  # (S, V, H, W, 3)
        masks = np.stack([gt.target_masks[c][steps] for c in CAMERA_NAMES], 1)  # (S, V, Hm, Wm)
        text = semantic.encode_text([ep.instruction])
        x = torch.from_numpy(frames).to(device).movedim(-1, -3).float() / 255.0  # (S, V, 3, H, W)
        recon = model.decode(model.codec.encode(x))
        for kind, imgs in (("rendered", x), ("decoded", recon)):
            flat = imgs.flatten(0, 1)
            scores = semantic.score(flat, text.expand(len(flat), -1))
            c = scores.centroid.cpu().numpy()
            m = masks.reshape(-1, *masks.shape[-2:])
            Hm, Wm = m.shape[-2:]
            xs = np.clip((c[:, 0] * Wm).astype(int), 0, Wm - 1)
            ys = np.clip((c[:, 1] * Hm).astype(int), 0, Hm - 1)
            pixels = m.reshape(len(m), -1).sum(1)
            hit = m[np.arange(len(m)), ys, xs]
            hits[kind].append(np.stack([hit, pixels], 1))
        views.append(np.tile(np.arange(len(CAMERA_NAMES)), len(steps)))
    out = {}
    view_idx = np.concatenate(views)
    for kind, parts in hits.items():
        arr = np.concatenate(parts)
        vis = arr[:, 1] >= cfg.min_visible_px
        out[f"{kind}_by_target_size"] = {
            f">={px}px": float(arr[arr[:, 1] >= px, 0].mean())
            for px in (cfg.min_visible_px, 16, 64)
            if (arr[:, 1] >= px).any()
        }
        out[kind] = float(arr[vis, 0].mean()) if vis.any() else float("nan")
        out[f"{kind}_per_view"] = {
            c: float(arr[vis & (view_idx == v), 0].mean()) if (vis & (view_idx == v)).any() else float("nan")
            for v, c in enumerate(CAMERA_NAMES)
        }
        out["visible_frames"] = int(vis.sum())  # the same frames for both kinds
    return out


def run_reward_eval(
    model: WorldModel,
    value: ValueHead,
    semantic: SemanticBackend,
    data: Path,
    out: Path,
    cfg: RewardEvalConfig = RewardEvalConfig(),
    progress: bool = True,
    filename: str = "reward.json",
) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    split = split_data(model, data, progress)
    dataset = EpisodeDataset(data)
    modes = [str(dataset.episode_row(ep.index).get("vidplan/failure_mode") or "") for ep in split.episodes]
    v = value_quality(model, value, split, cfg.batch, modes)
    s = semantic_quality(model, semantic, data, split, cfg, progress)
    result = {
        **{k: v[k] for k in ("value_kendall_tau", "success_auroc")},
        "centroid_hit_rate": s["rendered"],
        "value": v,
        "semantic": s,
        "data": str(data),
        "gamma": value.config.gamma,
    }
    (out / filename).write_text(json.dumps(result, indent=1))
    return result


def format_reward(result: dict) -> str:
    v, s = result["value"], result["semantic"]
    return "\n".join(
        [
            f"value     Kendall tau {v['value_kendall_tau']:.3f} (p {v['value_kendall_p']:.1e}, {v['frames']} frames), "
            f"success AUROC {v['success_auroc']:.3f} ({v['successes']}/{v['episodes']} successful; "
            f"{v.get('success_auroc_without_wrong_target', float('nan')):.3f} without the "
            f"{v.get('wrong_target_failures', 0)} wrong-target failures)",
            f"semantic  centroid in target mask {s['rendered']:.3f} rendered, {s['decoded']:.3f} through the codec "
            f"({s['visible_frames']} visible frames)",
            "          by target size: "
            + ", ".join(f"{k} {val:.3f}" for k, val in s["rendered_by_target_size"].items()),
            "          per view: " + ", ".join(f"{k} {val:.3f}" for k, val in s["rendered_per_view"].items()),
            "          through the codec: " + ", ".join(f"{k} {val:.3f}" for k, val in s["decoded_per_view"].items()),
        ]
    )
