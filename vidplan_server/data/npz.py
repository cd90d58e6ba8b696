"""Atomic npz shards: the file appears whole or not at all, so a stopped recorder can resume by existence."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np


def write_npz_atomic(path: Path, arrays: dict) -> None:
    """Write ``arrays`` compressed to ``path`` through a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
