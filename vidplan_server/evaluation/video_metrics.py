"""Pixel metrics of predicted frames: PSNR, SSIM (scikit-image), and PSNR inside the moving region.

Frames are float arrays in [0, 1], (..., H, W, 3). The moving region of a predicted frame is where the
true future frame differs from the last observed frame by more than ``threshold`` in any channel,
dilated by ``dilate`` pixels -- the pixels a copy-the-last-frame predictor gets wrong.
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage.metrics import structural_similarity


def psnr(pred: np.ndarray, true: np.ndarray) -> float:
    """PSNR in dB of whole frames (mean squared error over every element)."""
    mse = float(np.mean((np.asarray(pred, np.float64) - true) ** 2))
    return 10.0 * np.log10(1.0 / max(mse, 1e-10))


def ssim(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean SSIM over frames (..., H, W, 3): Gaussian window sigma 1.5, as in Wang et al. 2004."""
    p = np.asarray(pred, np.float64).reshape(-1, *pred.shape[-3:])
    t = np.asarray(true, np.float64).reshape(-1, *true.shape[-3:])
    return float(
        np.mean(
            [
                structural_similarity(
                    a, b, channel_axis=-1, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
                )
                for a, b in zip(p, t, strict=True)
            ]
        )
    )


def moving_mask(true_future: np.ndarray, last_frame: np.ndarray, threshold: float = 0.1, dilate: int = 1) -> np.ndarray:
    """Boolean (..., H, W): pixels of ``true_future`` (..., H, W, 3) that differ from ``last_frame``
    (broadcastable) by more than ``threshold`` in some channel, dilated by ``dilate`` pixels."""
    changed = (np.abs(np.asarray(true_future, np.float32) - last_frame).max(-1) > threshold).astype(np.uint8)
    if dilate > 0:
        kernel = np.ones((2 * dilate + 1, 2 * dilate + 1), np.uint8)
        flat = changed.reshape(-1, *changed.shape[-2:])
        changed = np.stack([cv2.dilate(m, kernel) for m in flat]).reshape(changed.shape)
    return changed.astype(bool)


def masked_squared_error(pred: np.ndarray, true: np.ndarray, mask: np.ndarray) -> tuple[float, int]:
    """(sum of squared errors, number of elements) over the pixels in ``mask``."""
    err = ((np.asarray(pred, np.float64) - true) ** 2).sum(-1)
    return float(err[mask].sum()), int(mask.sum()) * pred.shape[-1]


def psnr_from_sse(sse: float, count: int) -> float:
    if count == 0:
        return float("nan")
    return 10.0 * np.log10(1.0 / max(sse / count, 1e-10))
