"""Speed and quality of the world model's samplers on held-out episodes (issue: world model benchmark).

For the EDM Heun sampler and the k-step flow map (and a copy-the-last-frame baseline):

- ``ms_per_rollout``: wall time of one batched latent rollout of ``candidates`` action chunks from
  encoded history latents (the planner's hot path; encoding and decoding are the same for every method
  and reported apart as ``encode_ms`` / ``decode_ms``); median over ``repeats`` after one warm-up.
- ``nfe``: network evaluations per rollout (Heun: 2 * steps - 1; flow map: k; copy-last: 0).
- ``psnr``, ``ssim``: decoded predictions against the real future frames (all views, all H frames),
  with the true action chunk; ``psnr_moving``: PSNR over the pixels that change between the last
  observed and the true future frame (:func:`~vidplan_server.evaluation.video_metrics.moving_mask`).

Every method sees the same windows and the same start noise per window.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vidplan_server.data.episodes import load_episodes
from vidplan_server.data.windows import window_indices
from vidplan_server.evaluation.video_metrics import masked_squared_error, moving_mask, psnr, psnr_from_sse, ssim
from vidplan_server.models.world_model import WorldModel, network_evaluations


@dataclass(frozen=True)
class BenchConfig:
    windows: int = 48
    candidates: int = 6
    heun_steps: int = 18
    flow_steps: tuple[int, ...] = (1, 2, 4)
    repeats: int = 5
    batch: int = 8
    seed: int = 0
    moving_threshold: float = 0.1
    methods: tuple[str, ...] = field(default=())  # empty: all


def _windows(model: WorldModel, data: Path, n: int, progress: bool):
    eps = load_episodes(data, image_size=model.codec.config.image_size, progress=progress)
    cfg = model.config
    idx = window_indices([len(e.frames) for e in eps], cfg.net.history, cfg.net.horizon, cfg.frame_stride)
    frames = np.concatenate([e.frames for e in eps])
    actions = np.concatenate([e.action for e in eps])
    pick = np.linspace(0, len(idx["episode"]) - 1, min(n, len(idx["episode"]))).round().astype(int)
    return {
        "history": frames[idx["history"][pick].numpy()],  # (N, T, V, H, W, 3) uint8
        "future": frames[idx["future"][pick].numpy()],  # (N, H, V, H, W, 3)
        "actions": actions[idx["action"][pick].numpy()],  # (N, H, 7)
        "episodes": len(eps),
    }


def _time(fn, repeats: int, device: torch.device) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000.0)


@torch.no_grad()
def run_benchmark(model: WorldModel, data: str | Path, cfg: BenchConfig = BenchConfig(), progress: bool = True) -> dict:
    device = model.device
    w = _windows(model, Path(data), cfg.windows, progress)
    N, H = len(w["actions"]), model.horizon
    g = torch.Generator().manual_seed(cfg.seed)
    hist_lat = torch.cat([model.encode(torch.from_numpy(b)) for b in np.array_split(w["history"], max(1, N // 16))])
    noise = torch.randn((N, H, *hist_lat.shape[2:]), generator=g).to(device)
    actions = torch.from_numpy(w["actions"]).float().to(device)
    true = w["future"].astype(np.float32) / 255.0  # (N, H, V, H, W, 3)
    last = w["history"][:, -1:].astype(np.float32) / 255.0  # (N, 1, V, H, W, 3)
    mask = moving_mask(true, last, cfg.moving_threshold)

    methods: dict[str, tuple[str, int]] = {"diffusion": ("diffusion", cfg.heun_steps)}
    methods.update({f"flow_{k}": ("flow", k) for k in cfg.flow_steps})
    if model.denoiser is None:
        methods.pop("diffusion")
    if model.flow_map is None:
        methods = {k: v for k, v in methods.items() if v[0] != "flow"}
    if cfg.methods:
        methods = {k: v for k, v in methods.items() if k in cfg.methods}

    def score(pred: np.ndarray) -> dict:
        sse, count = masked_squared_error(pred, true, mask)
        return {"psnr": psnr(pred, true), "ssim": ssim(pred, true), "psnr_moving": psnr_from_sse(sse, count)}

    results = {"copy_last": {"nfe": 0, "ms_per_rollout": 0.0, **score(np.broadcast_to(last, true.shape))}}

    # one planning-sized batch for timing: the first window with `candidates` perturbed action chunks
    C = cfg.candidates
    hist_c = hist_lat[:1].expand(C, *hist_lat.shape[1:]).contiguous()
    act_c = actions[:1].expand(C, H, 7).clone()
    act_c[1:, :, :3] += 0.02 * torch.randn((C - 1, H, 3), generator=g).to(device)
    noise_c = torch.randn((C, H, *hist_lat.shape[2:]), generator=g).to(device)

    for name, (method, steps) in tqdm(methods.items(), desc="methods", disable=not progress):
        preds = []
        for s in range(0, N, cfg.batch):
            lat = model.rollout(
                hist_lat[s : s + cfg.batch], actions[s : s + cfg.batch], method, steps, noise=noise[s : s + cfg.batch]
            )
            preds.append(model.decode(lat).float().cpu())
        pred = torch.cat(preds).permute(0, 1, 2, 4, 5, 3).numpy()  # (N, H, V, H, W, 3)
        ms = _time(lambda m=method, k=steps: model.rollout(hist_c, act_c, m, k, noise=noise_c), cfg.repeats, device)
        results[name] = {"nfe": network_evaluations(method, steps), "ms_per_rollout": ms, **score(pred)}

    lat_c = model.rollout(hist_c, act_c, "flow" if model.flow_map is not None else "diffusion", 1, noise=noise_c)
    frames_c = torch.from_numpy(np.repeat(w["history"][:1, -1], C, axis=0))
    extra = {
        "encode_ms": _time(lambda: model.encode(frames_c), cfg.repeats, device),
        "decode_ms": _time(lambda: model.decode(lat_c), cfg.repeats, device),
    }
    summary = {}
    if "diffusion" in results:
        base = results["diffusion"]
        for name, r in results.items():
            if name.startswith("flow_"):
                summary[name] = {
                    "speedup": base["ms_per_rollout"] / max(r["ms_per_rollout"], 1e-9),
                    "nfe_ratio": base["nfe"] / r["nfe"],
                    "psnr_gap_db": base["psnr"] - r["psnr"],
                }
    return {
        "methods": results,
        "vs_diffusion": summary,
        "timing": extra,
        "setup": {
            "windows": N,
            "episodes": w["episodes"],
            "candidates": C,
            "device": str(device),
            "threads": torch.get_num_threads(),
            "moving_fraction": float(mask.mean()),
            "heun_steps": cfg.heun_steps,
            "horizon": H,
            "history": model.history,
            "frame_stride": model.config.frame_stride,
        },
    }


def format_table(result: dict) -> str:
    rows = [f"{'method':<10} {'nfe':>4} {'ms/rollout':>11} {'psnr':>7} {'ssim':>6} {'psnr_moving':>12}"]
    for name, r in result["methods"].items():
        rows.append(
            f"{name:<10} {r['nfe']:>4} {r['ms_per_rollout']:>11.1f} {r['psnr']:>7.2f} {r['ssim']:>6.3f} "
            f"{r['psnr_moving']:>12.2f}"
        )
    for name, s in result["vs_diffusion"].items():
        rows.append(
            f"{name}: {s['speedup']:.1f}x faster than diffusion for {s['nfe_ratio']:.1f}x fewer evaluations, "
            f"PSNR {s['psnr_gap_db']:+.2f} dB below it"
        )
    t = result["timing"]
    setup = result["setup"]
    rows.append(
        f"encode {t['encode_ms']:.1f} ms, decode {t['decode_ms']:.1f} ms for {setup['candidates']} frames; "
        f"{setup['windows']} windows, moving region {100 * setup['moving_fraction']:.1f}% of pixels"
    )
    return "\n".join(rows)
