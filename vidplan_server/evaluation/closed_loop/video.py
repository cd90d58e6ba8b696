"""The mp4 of a closed-loop episode: the three views at the control rate, the executed plan's heatmaps below.

Frame k shows the observation of control step k (the one the agent saw when it chose the row executed at k) and,
when the chunk being executed came with ``info["heatmaps"]`` ``(H, V, h, w, 3)``, that plan's heatmaps of the
predicted frame that covers the row: row r of an S-row chunk maps to frame ``min(r * H // S, H - 1)`` (a chunk of
S = 15 rows and H = 5 frames gives frame r // 3, the model's frame stride). Each view is enlarged ``scale`` times;
the file is H.264 4:2:0 so that any player opens it. An episode whose agent sent no heatmaps at all has no
heatmap row.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vidplan_server.data.schema import CAMERA_NAMES, DT_S
from vidplan_server.data.video import VideoConfig, encode_video
from vidplan_server.data.video_frames import HEADER_PX, compose_frame

PLAYER_FRIENDLY = VideoConfig(pix_fmt="yuv420p", crf=18)


def plan_frame(row: int, rows: int, frames: int) -> int:
    """Index of the predicted frame (of ``frames``) that covers chunk row ``row`` (of ``rows``)."""
    return min(row * frames // max(rows, 1), frames - 1)


class EpisodeVideo:
    """Collects one frame per control step; :meth:`write` encodes them."""

    def __init__(self, scale: int = 3, cameras: tuple[str, ...] = CAMERA_NAMES) -> None:
        self.scale, self.cameras = scale, cameras
        self.frames: list[np.ndarray] = []
        self.has_heatmaps = False

    def add(
        self,
        views: dict[str, np.ndarray],
        heatmaps: np.ndarray | None,
        row: int,
        rows: int,
        label: str,
        alert: bool = False,
    ) -> None:
        """Add the frame of one control step; ``heatmaps``: the executed chunk's ``(H, V, h, w, 3)`` or None."""
        shown = None
        if heatmaps is not None:
            frame = heatmaps[plan_frame(row, rows, heatmaps.shape[0])]
            shown = {c: frame[v] for v, c in enumerate(self.cameras)}
            self.has_heatmaps = True
        self.frames.append(compose_frame(views, shown, label, alert, self.scale, self.cameras))

    def write(self, path: Path) -> Path | None:
        """Encode to ``path`` (atomically: a partial file never has the final name); None if there is no frame."""
        if not self.frames:
            return None
        frames = np.stack(self.frames)
        if not self.has_heatmaps:
            frames = frames[:, : HEADER_PX + (frames.shape[1] - HEADER_PX) // 2]  # drop the empty heatmap row
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            encode_video(frames, tmp, fps=round(1.0 / DT_S), config=PLAYER_FRIENDLY)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path
