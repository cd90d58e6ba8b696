"""Contact sheets and preview videos of recorded episodes (opencv)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from vidplan_server.data.schema import CAMERA_NAMES, Episode
from vidplan_server.data.video import VideoConfig, encode_video

HEADER_PX = 44


def _upscale(img: np.ndarray, min_height: int) -> np.ndarray:
    scale = max(1, int(np.ceil(min_height / img.shape[0])))
    return cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST) if scale > 1 else img


def _text(canvas: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.5, colour=(20, 20, 20)) -> None:
    cv2.putText(canvas, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def contact_sheet(episode: Episode, columns: int = 8, min_tile: int = 128, title: str = "") -> np.ndarray:
    """RGB image: one row per camera, ``columns`` frames evenly spaced over the episode."""
    T = len(episode)
    idx = np.linspace(0, T - 1, min(columns, T)).round().astype(int)
    rows = []
    for cam in CAMERA_NAMES:
        tiles = [_upscale(episode.images[cam][i], min_tile) for i in idx]
        rows.append(np.concatenate(tiles, axis=1))
    grid = np.concatenate(rows, axis=0)
    label_w = 170
    body = np.full((grid.shape[0], label_w + grid.shape[1], 3), 255, np.uint8)
    body[:, label_w:] = grid
    tile_h = grid.shape[0] // len(CAMERA_NAMES)
    for r, cam in enumerate(CAMERA_NAMES):
        _text(body, cam, (6, r * tile_h + tile_h // 2), 0.42)
    header = np.full((HEADER_PX, body.shape[1], 3), 255, np.uint8)
    verdict = "SUCCESS" if episode.success else "FAILURE"
    colour = (20, 140, 40) if episode.success else (200, 30, 30)
    _text(header, f'{title}"{episode.language_instruction}"', (6, 18), 0.55)
    _text(header, f"{verdict}  |  {T} steps @ 15 Hz  |  frames {', '.join(map(str, idx))}", (6, 38), 0.45, colour)
    return np.concatenate([header, body], axis=0)


def preview_video(episode: Episode, path: Path, fps: int = 15, min_tile: int = 192) -> None:
    """The three views side by side over time, as an H.264 4:2:0 mp4 that any player opens."""
    frames = np.stack(
        [
            np.concatenate([_upscale(episode.images[cam][t], min_tile) for cam in CAMERA_NAMES], axis=1)
            for t in range(len(episode))
        ]
    )
    encode_video(frames, path, fps, VideoConfig(pix_fmt="yuv420p", crf=18))


def write_preview(episode: Episode, sheet_path: Path, title: str = "") -> Path:
    """Write the contact sheet PNG and, beside it, the episode's mp4; return the mp4 path."""
    sheet_path = Path(sheet_path)
    sheet_path.parent.mkdir(parents=True, exist_ok=True)
    sheet = contact_sheet(episode, title=title)
    if not cv2.imwrite(str(sheet_path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{sheet_path}: could not write image (unknown extension?)")
    video_path = sheet_path.with_suffix(".mp4")
    preview_video(episode, video_path)
    return video_path
