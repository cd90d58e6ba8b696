"""Branch folders (``vidplan sim branches``, :mod:`vidplan_server.apps.branches`): the layout and its reader.

``OUT/branches.json`` holds the recording options (``history`` T, ``horizon`` H, ``frame_stride``, ...); each
``OUT/shards/<i>.npz`` one recorded state: ``frames`` (K, T + H, V, h, w, 3) uint8 (history oldest first, then
the rendered future), ``actions`` (K, H, 7) float32 absolute knot actions, ``kinds`` (K,), ``episode``, ``step``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vidplan_server.data.errors import DatasetError

MANIFEST = "branches.json"


def shard_file(out: Path, index: int) -> Path:
    return Path(out) / "shards" / f"{index:05d}.npz"


def shard_files(folder: Path) -> list[Path]:
    """The shards of a branch folder in order; DatasetError when it is not one."""
    files = sorted((Path(folder) / "shards").glob("*.npz"))
    if not (Path(folder) / MANIFEST).exists() or not files:
        raise DatasetError(f"{folder}: not a branch folder with shards (`vidplan sim branches` writes them)")
    return files


def branch_manifest(folder: Path) -> dict:
    return json.loads((Path(folder) / MANIFEST).read_text())


def read_branches(files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """frames (N, T + H, V, h, w, 3) uint8 and knot actions (N, H, 7) of the given shards, concatenated."""
    frames, actions = [], []
    for f in files:
        with np.load(f) as z:
            frames.append(z["frames"])
            actions.append(z["actions"])
    return np.concatenate(frames), np.concatenate(actions)
