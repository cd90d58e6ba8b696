"""Write episodes to a LeRobot v3.0 dataset, atomically per episode and resumably.

Writing one episode happens in two steps so that the expensive half can run in worker processes:

1. `stage_episode` (any process): encodes the three videos and the ground-truth masks into a
   private staging folder ``<root>/.staging/`` and returns a small picklable `StagedEpisode`.
2. `DatasetWriter.commit` (one process): gives the episode the next episode index and its
   global frame indices, moves data and videos into place with ``os.replace``, and finally writes
   the episode's metadata file. That last rename is the commit point: the reader only sees
   episodes listed in ``meta/episodes``, so an interrupted recording leaves at most orphan files
   that the next run overwrites, never a half-written episode that the reader accepts.

Episodes are committed in index order, so the committed set is always a prefix and a resumed
recording continues at ``writer.num_episodes``.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vidplan_server.data import lerobot_format as fmt
from vidplan_server.data.errors import DatasetError
from vidplan_server.data.reader import read_episode_rows, read_vidplan_info, vector_column
from vidplan_server.data.schema import CAMERA_NAMES, Episode
from vidplan_server.data.stats import array_stats, image_stats, merge_image_stats, merge_stats
from vidplan_server.data.video import VideoConfig, encode_video

STAGING_DIR = ".staging"
LOCK_FILE = ".writer.lock"
# Low-dimensional features with stats in meta/stats.json, and their per-frame sizes.
LOWDIM_DIMS = {
    "observation.state.cartesian_position": 6,
    "observation.state.gripper_position": 1,
    "observation.state.joint_position": 7,
    "observation.state": 8,
    "action.cartesian_position": 6,
    "action.gripper_position": 1,
    "action.joint_position": 7,
    "action": 8,
    "reward": 1,
    "discount": 1,
}
LOWDIM_STATS_FEATURES = tuple(LOWDIM_DIMS)
# Per-frame columns whose stats are only known at commit (they depend on the episode's place in the dataset).
INDEX_STATS_FEATURES = fmt.INDEX_COLUMNS


@dataclass
class StagedEpisode:
    """An episode whose heavy files are encoded and waiting in the staging folder."""

    folder: Path
    columns: dict[str, Any]  # per-frame columns, without the dataset-level index columns
    length: int
    instruction: str
    success: bool
    video_files: dict[str, Path]  # video key -> staged mp4
    stats: dict[str, dict]
    extra: dict[str, Any] = field(default_factory=dict)  # ours, per episode: meta/vidplan/episodes


def stage_episode(
    episode: Episode, root: Path, fps: int = fmt.FPS, video: VideoConfig = VideoConfig()
) -> StagedEpisode:
    """Validate ``episode`` and encode its files into ``root/.staging``."""
    episode.validate()
    folder = Path(root) / STAGING_DIR / uuid.uuid4().hex
    folder.mkdir(parents=True)
    T = len(episode)
    videos = {}
    stats: dict[str, dict] = {}
    for cam in CAMERA_NAMES:
        key = fmt.VIDEO_KEYS[cam]
        videos[key] = folder / f"{key}.mp4"
        encode_video(episode.images[cam], videos[key], fps, video)
        stats[key] = image_stats(episode.images[cam])

    joint_action = episode.action_joint_position
    if joint_action is None:
        joint_action = np.full((T, 7), np.nan, np.float32)
    columns: dict[str, Any] = {
        "observation.state.cartesian_position": episode.cartesian_position,
        "observation.state.gripper_position": episode.gripper_position,
        "observation.state.joint_position": episode.joint_position,
        "observation.state": np.concatenate([episode.joint_position, episode.gripper_position], 1),
        "action.cartesian_position": episode.action[:, :6],
        "action.gripper_position": episode.action[:, 6:7],
        "action.joint_position": joint_action,
        "action": np.concatenate([joint_action, episode.action[:, 6:7]], 1),
        "language_instruction": [episode.language_instruction] * T,
        "is_first": episode.is_first,
        "is_last": episode.is_last,
        "is_terminal": episode.is_terminal,
        "is_episode_successful": np.full(T, episode.success),
        "reward": episode.reward,
        "discount": episode.discount,
    }
    extra: dict[str, Any] = {"success": bool(episode.success)}
    for k, v in episode.metadata.items():
        extra[f"vidplan/{k}"] = v
    gt = episode.ground_truth
    if gt is not None:
        n = gt.object_poses.shape[1]
        if n > fmt.MAX_GT_OBJECTS:
            raise DatasetError(f"{fmt.GT_POSES}: {n} objects, at most {fmt.MAX_GT_OBJECTS} are stored")
        poses = np.full((T, fmt.MAX_GT_OBJECTS, 7), np.nan, np.float32)
        poses[:, :n] = gt.object_poses
        columns[fmt.GT_POSES] = poses.reshape(T, -1)
        for cam in CAMERA_NAMES:
            columns[fmt.GT_MASK_KEYS[cam]] = [_png(m) for m in gt.target_masks[cam]]
        extra["ground_truth/object_names"] = list(gt.object_names)
        extra["ground_truth/target_index"] = int(gt.target_index)
        for cam in CAMERA_NAMES:
            stats[fmt.GT_MASK_KEYS[cam]] = image_stats(gt.target_masks[cam].astype(np.uint8) * 255)
    # LeRobot keeps statistics of every feature but strings (flags and ground truth too).
    for key, values in columns.items():
        if key != "language_instruction" and not key.startswith("ground_truth.target_mask."):
            stats[key] = array_stats(np.asarray(values, np.float64).reshape(T, -1))
    return StagedEpisode(folder, columns, T, episode.language_instruction, bool(episode.success), videos, stats, extra)


def _png(mask: np.ndarray) -> dict:
    ok, buf = cv2.imencode(".png", mask.astype(np.uint8) * 255)
    if not ok:
        raise DatasetError("ground_truth.target_mask: PNG encoding failed")
    return {"bytes": buf.tobytes(), "path": None}


def _exclusive_lock(path: Path):
    """Hold an exclusive flock on ``path`` for the writer's lifetime: one writer per dataset."""
    handle = open(path, "a+")  # noqa: SIM115 - kept open on purpose, released when the writer dies
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DatasetError(f"{path.parent}: another process is writing to this dataset") from None
    return handle


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _atomic_write_parquet(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def _to_arrow(name: str, values: Any) -> pa.Array:
    if name.startswith("ground_truth.target_mask."):
        return pa.array(values, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    if isinstance(values, list):
        return pa.array(values, type=pa.string())
    arr = np.asarray(values)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]  # LeRobot stores shape-(1,) features as scalar columns
    if arr.ndim == 1:
        return pa.array(arr)
    flat = pa.array(arr.reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, arr.shape[1])


class DatasetWriter:
    """Appends episodes to the dataset at ``root`` (created, or opened to resume)."""

    def __init__(
        self,
        root: str | Path,
        resolution: tuple[int, int],
        fps: int = fmt.FPS,
        video: VideoConfig = VideoConfig(),
        info_extra: dict | None = None,
    ) -> None:
        self.root = Path(root)
        self.height, self.width = resolution
        self.fps = fps
        self.video = video
        self.info_extra = dict(info_extra or {})
        info_path = self.root / fmt.INFO_PATH
        if info_path.exists():
            self._check_compatible(json.loads(info_path.read_text()))
        elif self.root.exists() and any(p.name not in (STAGING_DIR, LOCK_FILE) for p in self.root.iterdir()):
            raise DatasetError(
                f"{self.root}: exists, is not empty and has no {fmt.INFO_PATH}; refusing to write into it"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = _exclusive_lock(self.root / LOCK_FILE)
        shutil.rmtree(self.root / STAGING_DIR, ignore_errors=True)  # leftovers of an interrupted run
        self.episodes = self._load_committed()
        self.tasks: dict[str, int] = {}
        for row in self.episodes:
            for task in row["tasks"]:
                self.tasks.setdefault(task, len(self.tasks))
        self.total_frames = sum(int(r["length"]) for r in self.episodes)
        if not info_path.exists():
            self._write_info()

    def close(self) -> None:
        """Release the dataset lock (also released when the process exits)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def features(self) -> dict:
        """info.json ``features`` of this dataset (the order of the episode-metadata stats columns)."""
        return fmt.feature_spec(self.height, self.width, self.video.info(self.height, self.width, self.fps))

    def _check_compatible(self, info: dict) -> None:
        where = self.root / fmt.INFO_PATH
        if info.get("codebase_version") != fmt.CODEBASE_VERSION:
            raise DatasetError(
                f"{where}: codebase_version {info.get('codebase_version')!r}, expected {fmt.CODEBASE_VERSION!r}"
            )
        if info.get("fps") != self.fps:
            raise DatasetError(f"{where}: fps {info.get('fps')} differs from the requested {self.fps}")
        shape = info.get("features", {}).get(fmt.VIDEO_KEYS[CAMERA_NAMES[0]], {}).get("shape")
        if shape != [self.height, self.width, 3]:
            raise DatasetError(f"{where}: resolution {shape} differs from the requested {[self.height, self.width, 3]}")
        recorded = read_vidplan_info(self.root, info)
        for key, value in self.info_extra.items():
            if key in recorded and recorded[key] != value:
                raise DatasetError(f"{where}: vidplan.{key} is {recorded[key]!r}, this run asks for {value!r}")

    def _load_committed(self) -> list[dict]:
        rows = read_episode_rows(self.root)
        rows.sort(key=lambda r: r["episode_index"])
        for i, row in enumerate(rows):
            if row["episode_index"] != i:
                raise DatasetError(f"{self.root}: episode metadata has a gap at episode_index {i}")
        return rows

    # ------------------------------------------------------------------ commit
    def write_episode(self, episode: Episode) -> int:
        """Stage and commit in one call (single-process recording and tests)."""
        return self.commit(stage_episode(episode, self.root, self.fps, self.video))

    def commit(self, staged: StagedEpisode) -> int:
        index = self.num_episodes
        chunk, file = divmod(index, fmt.CHUNKS_SIZE)
        loc = {"chunk_index": chunk, "file_index": file}
        task_index = self.tasks.setdefault(staged.instruction, len(self.tasks))
        T = staged.length
        frame_index = np.arange(T, dtype=np.int64)
        cols = dict(staged.columns)
        cols["timestamp"] = (frame_index / self.fps).astype(np.float32)
        cols["frame_index"] = frame_index
        cols["episode_index"] = np.full(T, index, np.int64)
        cols["index"] = self.total_frames + frame_index
        cols["task_index"] = np.full(T, task_index, np.int64)
        table = pa.table({name: _to_arrow(name, v) for name, v in cols.items()})
        _atomic_write_parquet(table, self.root / fmt.DATA_PATH.format(**loc))
        # One row of episode metadata with exactly LeRobot's columns, in its order.
        row: dict[str, Any] = {
            "episode_index": index,
            "tasks": [staged.instruction],
            "length": T,
            "data/chunk_index": chunk,
            "data/file_index": file,
            "dataset_from_index": self.total_frames,
            "dataset_to_index": self.total_frames + T,
        }
        for key, src in staged.video_files.items():
            dst = self.root / fmt.VIDEO_PATH.format(video_key=key, **loc)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
            row.update(
                {
                    f"videos/{key}/chunk_index": chunk,
                    f"videos/{key}/file_index": file,
                    f"videos/{key}/from_timestamp": 0.0,
                    f"videos/{key}/to_timestamp": T / self.fps,
                }
            )
        stats = dict(staged.stats)
        for key in INDEX_STATS_FEATURES:
            stats[key] = array_stats(np.asarray(cols[key], np.float64).reshape(T, -1))
        for feat in self.features:
            for stat, value in stats.get(feat, {}).items():
                row[f"stats/{feat}/{stat}"] = value
        row.update({"meta/episodes/chunk_index": chunk, "meta/episodes/file_index": file})
        # Ours (seed, ground-truth names, ...) beside LeRobot's metadata, written before the commit point.
        _atomic_write_text(
            self.root / fmt.VIDPLAN_EPISODES_PATH.format(**loc),
            json.dumps({"episode_index": index, **staged.extra}, default=_json_value),
        )
        # Commit point: the episode exists once its metadata file does.
        _atomic_write_parquet(pa.Table.from_pylist([row]), self.root / fmt.EPISODES_PATH.format(**loc))
        shutil.rmtree(staged.folder, ignore_errors=True)
        self.episodes.append(row)
        self.total_frames += T
        self._write_info()
        if task_index == len(self.tasks) - 1:
            self._write_tasks()
        return index

    # ------------------------------------------------------------------ metadata
    def _write_tasks(self) -> None:
        df = pd.DataFrame({"task_index": list(self.tasks.values())}, index=pd.Index(list(self.tasks), name="task"))
        table = pa.Table.from_pandas(df)
        _atomic_write_parquet(table, self.root / fmt.TASKS_PATH)

    def _write_info(self) -> None:
        n = self.num_episodes
        info = {
            "codebase_version": fmt.CODEBASE_VERSION,
            "robot_type": fmt.ROBOT_TYPE,
            "total_episodes": n,
            "total_frames": self.total_frames,
            "total_tasks": len(self.tasks),
            "chunks_size": fmt.CHUNKS_SIZE,
            "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 500,
            "fps": self.fps,
            "splits": {"train": f"0:{n}"},
            "data_path": fmt.DATA_PATH,
            "video_path": fmt.VIDEO_PATH,
            "features": self.features,
        }
        _atomic_write_text(self.root / fmt.INFO_PATH, json.dumps(info, indent=2))
        _atomic_write_text(self.root / fmt.VIDPLAN_INFO_PATH, json.dumps(self.info_extra, indent=2))

    def finalize(self) -> None:
        """Write ``meta/stats.json``: every feature's episode stats merged as LeRobot merges them, and exact
        low-dimensional stats over all frames (their q01 / q99 normalise the world model's actions)."""
        if not self.episodes:
            return
        stats: dict[str, dict] = {}
        for feat, spec in self.features.items():
            parts = [_row_stats(row, feat) for row in self.episodes]
            parts = [p for p in parts if p is not None]
            if parts and spec["dtype"] in ("video", "image"):
                stats[feat] = merge_image_stats(parts)
            elif parts:
                stats[feat] = merge_stats(parts)
        columns: dict[str, list[np.ndarray]] = {k: [] for k in LOWDIM_STATS_FEATURES}
        for row in self.episodes:
            path = self.root / fmt.DATA_PATH.format(
                chunk_index=row["data/chunk_index"], file_index=row["data/file_index"]
            )
            table = pq.read_table(path, columns=list(LOWDIM_STATS_FEATURES))
            for key in LOWDIM_STATS_FEATURES:
                columns[key].append(vector_column(table, key, LOWDIM_DIMS[key], path))
        stats.update({k: array_stats(np.concatenate(v)) for k, v in columns.items()})
        _atomic_write_text(self.root / fmt.STATS_PATH, json.dumps(stats, indent=2))
        self._write_info()


def _row_stats(row: dict, feature: str) -> dict | None:
    """The stats of ``feature`` in an episode-metadata row (None when the row has none, e.g. an older layout)."""
    prefix = f"stats/{feature}/"
    found = {k[len(prefix) :]: v for k, v in row.items() if k.startswith(prefix) and v is not None}
    return found if {"min", "max", "mean", "std", "count"} <= set(found) else None


def _json_value(value: Any) -> Any:
    """numpy scalars and arrays in episode metadata, for json.dumps."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
