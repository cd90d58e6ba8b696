"""Feature statistics in LeRobot's ``stats.json`` layout (min, max, mean, std, count, q01, q99).

The 1st / 99th percentiles are what the world model normalizes actions with (DESIGN).
"""

from __future__ import annotations

import numpy as np


def _per_channel(values: np.ndarray) -> list:
    """``(3,)`` -> LeRobot's per-channel image stat layout ``(3, 1, 1)`` as nested lists."""
    return [[[float(c)]] for c in values]


def array_stats(x: np.ndarray) -> dict[str, list]:
    """Per-dimension stats of ``x`` ``(N, D)``."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return {
        "min": x.min(0).tolist(),
        "max": x.max(0).tolist(),
        "mean": x.mean(0).tolist(),
        "std": x.std(0).tolist(),
        "count": [int(len(x))],
        "q01": np.quantile(x, 0.01, axis=0).tolist(),
        "q99": np.quantile(x, 0.99, axis=0).tolist(),
    }


def image_stats(frames: np.ndarray, max_frames: int = 32) -> dict[str, list]:
    """Per-channel stats of ``frames`` ``(T, H, W, 3)`` uint8, scaled to [0, 1], shape (3, 1, 1) as LeRobot."""
    idx = np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).astype(int)
    x = frames[idx].reshape(-1, 3).astype(np.float64) / 255.0
    return {
        "min": _per_channel(x.min(0)),
        "max": _per_channel(x.max(0)),
        "mean": _per_channel(x.mean(0)),
        "std": _per_channel(x.std(0)),
        "count": [int(len(frames))],
    }


def merge_image_stats(parts: list[dict]) -> dict[str, list]:
    """Combine per-episode `image_stats` (count-weighted mean and pooled variance)."""
    counts = np.array([p["count"][0] for p in parts], dtype=np.float64)
    means = np.array([np.ravel(p["mean"]) for p in parts])
    vars_ = np.array([np.ravel(p["std"]) for p in parts]) ** 2
    w = counts / counts.sum()
    mean = (w[:, None] * means).sum(0)
    var = (w[:, None] * (vars_ + (means - mean) ** 2)).sum(0)
    return {
        "min": _per_channel(np.min([np.ravel(p["min"]) for p in parts], 0)),
        "max": _per_channel(np.max([np.ravel(p["max"]) for p in parts], 0)),
        "mean": _per_channel(mean),
        "std": _per_channel(np.sqrt(var)),
        "count": [int(counts.sum())],
    }
