"""`vidplan data info`: schema, counts, success rate and action statistics of a dataset."""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from vidplan_server.data.reader import EpisodeDataset
from vidplan_server.data.schema import CAMERA_NAMES

ACTION_NAMES = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")


def dataset_summary(ds: EpisodeDataset, progress: bool = True) -> dict:
    """Scan every episode's low-dimensional data (a progress bar on stderr for large datasets)."""
    lengths, successes, kinds, failures, actions = [], [], {}, {}, []
    for k in tqdm(range(len(ds)), desc="scan episodes", unit="ep", disable=not progress or len(ds) < 100):
        ep = ds.load_episode(k, images=False, ground_truth=False)
        lengths.append(len(ep))
        successes.append(ep.success)
        kind = ep.metadata.get("task_kind", "unknown")
        kinds[kind] = kinds.get(kind, 0) + 1
        mode = ep.metadata.get("failure_mode") or "nominal"
        failures[mode] = failures.get(mode, 0) + 1
        actions.append(ep.action)
    a = np.concatenate(actions) if actions else np.zeros((0, 7))
    return {
        "root": str(ds.root),
        "layout": ds.layout,
        "codebase_version": ds.info.get("codebase_version"),
        "fps": ds.fps,
        "cameras": {cam: ds.video_keys[cam] for cam in CAMERA_NAMES},
        "resolution": list(ds.resolution),
        "episodes": len(ds),
        "frames": int(sum(lengths)),
        "episode_length": {
            "min": int(min(lengths, default=0)),
            "mean": float(np.mean(lengths)) if lengths else 0.0,
            "max": int(max(lengths, default=0)),
        },
        "success_rate": float(np.mean(successes)) if successes else 0.0,
        "tasks": len(ds.tasks),
        "task_kinds": kinds,
        "episode_kinds": failures,
        "split": ds.vidplan_info.get("split"),
        "action_stats": {
            name: {
                "min": float(a[:, i].min()),
                "q01": float(np.quantile(a[:, i], 0.01)),
                "mean": float(a[:, i].mean()),
                "q99": float(np.quantile(a[:, i], 0.99)),
                "max": float(a[:, i].max()),
            }
            for i, name in enumerate(ACTION_NAMES)
        }
        if len(a)
        else {},
    }


def format_summary(s: dict, features: dict) -> str:
    lines = [
        f"dataset      {s['root']}  (LeRobot {s['codebase_version']}, {s['fps']} fps, split: {s['split']})",
        f"episodes     {s['episodes']}   frames {s['frames']}   length min/mean/max "
        f"{s['episode_length']['min']}/{s['episode_length']['mean']:.1f}/{s['episode_length']['max']}",
        f"success      {s['success_rate']:.3f}   tasks {s['tasks']}   kinds {s['task_kinds']}",
        f"episodes by  {s['episode_kinds']}",
        "cameras      "
        + ", ".join(f"{c} <- {k}" for c, k in s["cameras"].items())
        + f"  {s['resolution'][0]}x{s['resolution'][1]}",
        "",
        "schema (feature: dtype shape)",
    ]
    for name, spec in features.items():
        lines.append(f"  {name:48s} {spec.get('dtype', '?'):8s} {spec.get('shape')}")
    if s["action_stats"]:
        lines += ["", f"{'action':8s} {'min':>9s} {'q01':>9s} {'mean':>9s} {'q99':>9s} {'max':>9s}"]
        for name, st in s["action_stats"].items():
            lines.append(f"{name:8s} " + " ".join(f"{st[k]:9.4f}" for k in ("min", "q01", "mean", "q99", "max")))
    return "\n".join(lines)
