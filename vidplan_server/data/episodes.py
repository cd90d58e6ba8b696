"""Episodes in memory for training: frames at the model's resolution, actions, outcome.

Datasets are split into training and held-out episodes by episode index with a fixed seed, so every
stage (codec, world, flow map, later the heads) holds out the same episodes of a dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from vidplan_server.data.errors import DatasetError
from vidplan_server.data.reader import EpisodeDataset
from vidplan_server.data.schema import CAMERA_NAMES


@dataclass
class EpisodeArrays:
    """One episode, time-major: ``frames`` (T, V, H, W, 3) uint8 in CAMERA_NAMES order, ``action`` (T, 7)."""

    index: int
    frames: np.ndarray
    action: np.ndarray
    cartesian_position: np.ndarray
    success: bool
    instruction: str


def split_episodes(n: int, held_out_fraction: float = 0.1, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train, held_out) episode indices; at least one held-out episode when n >= 2."""
    if n < 1:
        raise DatasetError("the dataset has no episodes")
    order = np.random.default_rng(seed).permutation(n)
    k = 0 if n < 2 else max(1, int(round(n * held_out_fraction)))
    return sorted(order[k:].tolist()), sorted(order[:k].tolist())


def load_episodes(
    root: str | Path | EpisodeDataset,
    indices: list[int] | None = None,
    image_size: tuple[int, int] | None = None,
    progress: bool = True,
    images: bool = True,
) -> list[EpisodeArrays]:
    """Decode episodes ``indices`` (all by default), resizing views to ``image_size`` (H, W) if needed.

    ``images=False`` skips video decoding (``frames`` is then (T, V, 0, 0, 3)).
    """
    dataset = root if isinstance(root, EpisodeDataset) else EpisodeDataset(root)
    indices = list(range(len(dataset))) if indices is None else indices
    out = []
    for k in tqdm(indices, desc=f"load {Path(dataset.root).name}", disable=not progress, leave=False):
        ep = dataset.load_episode(k, images=images, ground_truth=False)
        views = []
        for cam in CAMERA_NAMES:
            frames = ep.images[cam]
            if images and image_size is not None and frames.shape[1:3] != tuple(image_size):
                frames = np.stack([cv2.resize(f, image_size[::-1], interpolation=cv2.INTER_AREA) for f in frames])
            views.append(frames)
        out.append(
            EpisodeArrays(
                index=k,
                frames=np.stack(views, axis=1),
                action=ep.action.astype(np.float32),
                cartesian_position=ep.cartesian_position.astype(np.float32),
                success=bool(ep.success),
                instruction=ep.language_instruction,
            )
        )
    return out
