"""Helpers shared by several test modules."""

from __future__ import annotations

from pathlib import Path

from vidplan_server.data.writer import DatasetWriter


def write_dataset(root: Path, episodes, resolution=(64, 64), split: str = "train") -> Path:
    """Write ``episodes`` as a finalized LeRobot v3.0 dataset at ``root``."""
    writer = DatasetWriter(root, resolution, info_extra={"split": split})
    for ep in episodes:
        writer.write_episode(ep)
    writer.finalize()
    writer.close()
    return root
