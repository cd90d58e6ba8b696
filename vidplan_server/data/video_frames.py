"""Frames of the robot videos (``vidplan demo``, closed-loop episodes): a text line, the views, the heatmaps."""

from __future__ import annotations

import cv2
import numpy as np

HEADER_PX = 24  # text line above the views in the video


def compose_frame(
    views: dict[str, np.ndarray],
    heatmaps: dict[str, np.ndarray] | None,
    label: str,
    hold: bool,
    scale: int,
    cameras: tuple[str, ...],
) -> np.ndarray:
    """One video frame ``(HEADER_PX + 2 h s, 3 w s, 3)`` uint8: a label, the views, the heatmaps (black if none).

    ``views`` / ``heatmaps``: camera name -> ``(h, w, 3)`` uint8 RGB (heatmaps of any size are resized to the
    views'); ``hold`` writes the label in red (the robot holds, or the episode failed).
    """
    h, w = views[cameras[0]].shape[:2]
    size = (w * scale, h * scale)  # cv2 wants (width, height)
    top = np.concatenate([cv2.resize(views[c], size, interpolation=cv2.INTER_NEAREST) for c in cameras], axis=1)
    bottom = np.zeros_like(top)
    for i, c in enumerate(cameras):
        if heatmaps and c in heatmaps:
            bottom[:, i * size[0] : (i + 1) * size[0]] = cv2.resize(heatmaps[c], size, interpolation=cv2.INTER_LINEAR)
    header = np.zeros((HEADER_PX, top.shape[1], 3), np.uint8)
    colour = (255, 90, 90) if hold else (235, 235, 235)
    cv2.putText(header, label, (6, HEADER_PX - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
    return np.concatenate([header, top, bottom], axis=0)


def heatmaps_by_frame(response) -> dict[int, dict[str, np.ndarray]]:
    """A ``PlanResponse``'s heatmaps decoded: predicted frame -> camera name -> ``(h, w, 3)`` uint8 RGB."""
    from vidplan_client.convert import decode_image

    out: dict[int, dict[str, np.ndarray]] = {}
    for item in response.heatmaps:
        out.setdefault(int(item.frame), {})[item.image.camera] = decode_image(item.image)
    return out
