"""Feature statistics in LeRobot's layout: min, max, mean, std, count and the quantiles q01, q10, q50, q90, q99.

As LeRobot (``lerobot/datasets/compute_stats.py``) writes them, in episode metadata (``stats/<feature>/<stat>``)
and in ``meta/stats.json``:

- every feature but strings has statistics (index columns and flags included);
- a vector feature of D values: each statistic has shape (D,); a feature of shape (1,): shape (1,);
- an image or video feature: per channel, scaled to [0, 1], shape (C, 1, 1) (3 for RGB, 1 for a mask);
- ``count`` has shape (1,).

The 1st / 99th percentiles are what the world model normalizes actions with (DESIGN). Quantiles here are exact
(``numpy.quantile``); LeRobot estimates them from histograms, and merges per-episode quantiles as an envelope
(the lowest lower quantile, the highest upper one), as :func:`merge_stats` does.
"""

from __future__ import annotations

import numpy as np

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
STAT_KEYS = ("min", "max", "mean", "std", "count", *QUANTILES)


def array_stats(x: np.ndarray) -> dict[str, list]:
    """Per-dimension stats of ``x`` ``(N, D)`` (or ``(N,)``: D = 1), each a list of D values; count ``[N]``."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    out: dict[str, list] = {
        "min": x.min(0).tolist(),
        "max": x.max(0).tolist(),
        "mean": x.mean(0).tolist(),
        "std": x.std(0).tolist(),
        "count": [int(len(x))],
    }
    for key, q in QUANTILES.items():
        out[key] = np.quantile(x, q, axis=0).tolist()
    return out


def _per_channel(values: np.ndarray) -> list:
    """``(C,)`` -> LeRobot's per-channel image stat layout ``(C, 1, 1)`` as nested lists."""
    return [[[float(c)]] for c in values]


def image_stats(frames: np.ndarray, max_frames: int = 32) -> dict[str, list]:
    """Per-channel stats of ``frames`` ``(T, H, W, C)`` uint8 (C = 3, or 1 for masks; ``(T, H, W)`` is C = 1),
    scaled to [0, 1], each of shape (C, 1, 1) as LeRobot; at most ``max_frames`` frames, evenly spread, are used
    (LeRobot samples too) and counted."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[..., None]
    idx = np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).astype(int)
    x = frames[idx].reshape(-1, frames.shape[-1]).astype(np.float64) / 255.0
    out: dict[str, list] = {
        "min": _per_channel(x.min(0)),
        "max": _per_channel(x.max(0)),
        "mean": _per_channel(x.mean(0)),
        "std": _per_channel(x.std(0)),
        "count": [int(len(idx))],
    }
    for key, q in QUANTILES.items():
        out[key] = _per_channel(np.quantile(x, q, axis=0))
    return out


def merge_stats(parts: list[dict]) -> dict[str, list]:
    """Combine per-episode stats of one feature (any shape, kept): count-weighted mean, pooled variance, min of
    minima, max of maxima; quantiles as LeRobot merges them, an envelope (min for q <= 50, max above); a quantile
    that some part lacks is left out."""
    counts = np.array([np.ravel(p["count"])[0] for p in parts], dtype=np.float64)
    shape = np.shape(parts[0]["mean"])
    means = np.stack([np.asarray(p["mean"], dtype=np.float64).reshape(shape) for p in parts])
    vars_ = np.stack([np.asarray(p["std"], dtype=np.float64).reshape(shape) for p in parts]) ** 2
    w = (counts / counts.sum()).reshape(-1, *([1] * len(shape)))
    mean = (w * means).sum(0)
    var = (w * (vars_ + (means - mean) ** 2)).sum(0)
    out: dict[str, list] = {
        "min": np.min([np.asarray(p["min"], dtype=np.float64).reshape(shape) for p in parts], 0).tolist(),
        "max": np.max([np.asarray(p["max"], dtype=np.float64).reshape(shape) for p in parts], 0).tolist(),
        "mean": mean.tolist(),
        "std": np.sqrt(var).tolist(),
        "count": [int(counts.sum())],
    }
    for key in QUANTILES:
        if all(key in p for p in parts):
            values = np.stack([np.asarray(p[key], dtype=np.float64).reshape(shape) for p in parts])
            out[key] = (values.min(0) if int(key[1:]) <= 50 else values.max(0)).tolist()
    return out


def merge_image_stats(parts: list[dict]) -> dict[str, list]:
    """Per-episode image stats combined, in the (C, 1, 1) layout whatever layout the parts were stored in (our
    older datasets kept them flat)."""
    channels = len(np.ravel(parts[0]["mean"]))
    shaped = [
        {
            k: (np.asarray(v, dtype=np.float64).reshape(channels, 1, 1).tolist() if k != "count" else v)
            for k, v in p.items()
        }
        for p in parts
    ]
    return merge_stats(shaped)
