"""``demo.mp4``: per control step a header line, the three views the loop saw, and below them the uncertainty
heatmaps of the plan being executed, for the predicted frame of the row being executed."""

from __future__ import annotations

import numpy as np

from vidplan_server.data.video_frames import compose_frame, heatmaps_by_frame


def video_frames(
    views: list[dict[str, np.ndarray]], records, responses: dict[int, object], scale: int, cameras: tuple[str, ...]
) -> np.ndarray:
    """Frames of the episode: step k shows the views the loop saw and the heatmaps of the plan it executed."""
    decoded: dict[int, dict[int, dict[str, np.ndarray]]] = {}
    shown: tuple[int, int] | None = None  # (sequence, frame) of the last heatmap shown; holds keep showing it
    frames = []
    for rec, seen in zip(records, views, strict=True):
        if rec.kind == "chunk" and rec.sequence in responses:
            response = responses[rec.sequence]
            frame = min(rec.row // max(response.frame_stride, 1), max(len(response.uncertainty) - 1, 0))
            shown = (rec.sequence, frame)
            label = f"step {rec.step:3d}  plan {rec.sequence} row {rec.row:2d}  frame {frame}"
        else:
            label = f"step {rec.step:3d}  HOLD: {rec.reason}"[:90]
        heatmaps = None
        if shown is not None:
            seq, frame = shown
            if seq not in decoded:
                decoded[seq] = heatmaps_by_frame(responses[seq])
            heatmaps = decoded[seq].get(frame)
        frames.append(compose_frame(seen, heatmaps, label, rec.kind == "hold", scale, cameras))
    return np.stack(frames)
