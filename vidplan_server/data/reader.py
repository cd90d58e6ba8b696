"""Read LeRobot datasets (v3.0 and v2.x layouts) of DROID episodes into our `Episode` schema.

Reads VidPlan's own recordings and real DROID ports: ``lerobot/droid_1.0.1`` (v3.0, camera keys
``observation.images.exterior_1_left`` ...) and the older port (camera keys
``observation.images.exterior_image_1_left`` ..., v2.x layout). Every field is resolved through
the explicit name table `lerobot_format.FIELD_SOURCES`; the cartesian action always comes from
``action.cartesian_position`` / ``action_dict.cartesian_position``, never from DROID's plain
``action`` column (documented inconsistently, joint velocities in the RLDS release).

Missing files, unreadable parquet, absent columns, wrong vector lengths and truncated videos
raise `DatasetError` with the file and the field in the message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vidplan_server.data import lerobot_format as fmt
from vidplan_server.data.errors import DatasetError
from vidplan_server.data.schema import CAMERA_NAMES, Episode, GroundTruth
from vidplan_server.data.video import VideoError, decode_video

VECTOR_DIMS = {
    "observation/cartesian_position": 6,
    "observation/gripper_position": 1,
    "observation/joint_position": 7,
    "action/cartesian_position": 6,
    "action/gripper_position": 1,
    "action/joint_position": 7,
}
REQUIRED = (
    "observation/cartesian_position",
    "observation/gripper_position",
    "observation/joint_position",
    "action/cartesian_position",
    "action/gripper_position",
)


class EpisodeDataset:
    """Random access to the episodes of one dataset folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: dataset folder not found")
        info_path = self.root / fmt.INFO_PATH
        if not info_path.is_file():
            raise DatasetError(f"{info_path}: missing (not a LeRobot dataset?)")
        try:
            self.info = json.loads(info_path.read_text())
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{info_path}: not valid JSON ({exc})") from exc
        version = str(self.info.get("codebase_version", ""))
        if version.startswith("v3"):
            self.layout = "v3"
        elif version.startswith("v2"):
            self.layout = "v2"
        else:
            raise DatasetError(f"{info_path}: codebase_version {version!r} is not supported (v2.x or v3.x)")
        for key in ("fps", "features", "data_path"):
            if key not in self.info:
                raise DatasetError(f"{info_path}: field {key!r} missing")
        self.fps = int(self.info["fps"])
        self.features: dict = self.info["features"]
        self.video_keys = self._resolve_video_keys()
        self.episodes = self._load_episode_rows()
        self.tasks = self._load_tasks()
        #: Our recording options (split, ...): meta/vidplan/info.json, or info.json["vidplan"] in older datasets.
        self.vidplan_info = read_vidplan_info(self.root, self.info)
        self._table_cache: tuple[Path, pa.Table] | None = None

    # ------------------------------------------------------------------ metadata
    def _resolve_video_keys(self) -> dict[str, str]:
        keys = {}
        for cam in CAMERA_NAMES:
            for table in (fmt.VIDEO_KEYS, fmt.LEGACY_VIDEO_KEYS):
                if table[cam] in self.features:
                    keys[cam] = table[cam]
                    break
            else:
                raise DatasetError(
                    f"{self.root / fmt.INFO_PATH}: no feature for camera {cam} "
                    f"(looked for {fmt.VIDEO_KEYS[cam]!r} and {fmt.LEGACY_VIDEO_KEYS[cam]!r})"
                )
        return keys

    def _load_episode_rows(self) -> list[dict]:
        rows: list[dict] = []
        if self.layout == "v3":
            rows = read_episode_rows(self.root)
            if not rows:
                raise DatasetError(f"{self.root / 'meta' / 'episodes'}: no episode metadata files")
            extras = read_episode_extras(self.root)
            rows = [{**extras.get(int(row["episode_index"]), {}), **row} for row in rows]
        else:
            path = self.root / "meta" / "episodes.jsonl"
            if not path.is_file():
                raise DatasetError(f"{path}: missing")
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rows.sort(key=lambda r: r["episode_index"])
        for row in rows:
            for key in ("episode_index", "length"):
                if key not in row:
                    raise DatasetError(f"{self.root / 'meta'}: episode metadata lacks field {key!r}")
        return rows

    def _load_tasks(self) -> dict[int, str]:
        if self.layout == "v3":
            path = self.root / fmt.TASKS_PATH
            if not path.is_file():
                return {}
            table = pq.read_table(path)
            names = [n for n in table.column_names if n != "task_index"]
            if not names:
                raise DatasetError(f"{path}: no task column")
            return dict(zip(table.column("task_index").to_pylist(), table.column(names[0]).to_pylist(), strict=True))
        path = self.root / "meta" / "tasks.jsonl"
        if not path.is_file():
            return {}
        return {int(r["task_index"]): r["task"] for r in map(json.loads, path.read_text().splitlines()) if r}

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def resolution(self) -> tuple[int, int]:
        shape = self.features[self.video_keys[CAMERA_NAMES[0]]]["shape"]
        return int(shape[0]), int(shape[1])

    def episode_row(self, k: int) -> dict:
        if not 0 <= k < len(self.episodes):
            raise IndexError(f"episode {k} out of range: {self.root} holds {len(self.episodes)} episodes")
        return self.episodes[k]

    # ------------------------------------------------------------------ files
    def _data_file(self, row: dict) -> Path:
        template = self.info["data_path"]
        if self.layout == "v3":
            rel = template.format(chunk_index=row["data/chunk_index"], file_index=row["data/file_index"])
        else:
            chunk = row["episode_index"] // int(self.info.get("chunks_size", 1000))
            rel = template.format(episode_chunk=chunk, episode_index=row["episode_index"])
        return self.root / rel

    def _video_file(self, row: dict, key: str) -> tuple[Path, float]:
        template = self.info.get("video_path")
        if not template:
            raise DatasetError(f"{self.root / fmt.INFO_PATH}: video_path missing (image datasets are not supported)")
        if self.layout == "v3":
            rel = template.format(
                video_key=key, chunk_index=row[f"videos/{key}/chunk_index"], file_index=row[f"videos/{key}/file_index"]
            )
            return self.root / rel, float(row.get(f"videos/{key}/from_timestamp", 0.0))
        chunk = row["episode_index"] // int(self.info.get("chunks_size", 1000))
        return self.root / template.format(video_key=key, episode_chunk=chunk, episode_index=row["episode_index"]), 0.0

    def _episode_table(self, row: dict) -> tuple[pa.Table, Path]:
        path = self._data_file(row)
        if self._table_cache is not None and self._table_cache[0] == path:
            table = self._table_cache[1]
        else:
            if not path.is_file():
                raise DatasetError(f"{path}: data file missing (episode {row['episode_index']})")
            try:
                table = pq.read_table(path)
            except Exception as exc:  # noqa: BLE001
                raise DatasetError(f"{path}: unreadable parquet ({exc})") from exc
            self._table_cache = (path, table)
        if "episode_index" in table.column_names:
            table = table.filter(pc.equal(table.column("episode_index"), row["episode_index"]))
        if "frame_index" in table.column_names:
            table = table.sort_by("frame_index")
        if table.num_rows != int(row["length"]):
            raise DatasetError(
                f"{path}: episode {row['episode_index']} has {table.num_rows} rows, metadata says {row['length']}"
            )
        return table, path

    # ------------------------------------------------------------------ episodes
    def load_episode(self, k: int, images: bool = True, ground_truth: bool = True, masks: bool = True) -> Episode:
        """Episode ``k`` in our schema; ``images=False`` skips video decoding (zeros of shape (T, 0, 0, 3));
        ``masks=False`` skips decoding the ground truth's target masks (PNG per frame and camera; its
        ``target_masks`` is then empty) for readers that need only the object poses."""
        row = self.episode_row(k)
        table, path = self._episode_table(row)
        T = table.num_rows
        cols: dict[str, Any] = {}
        for name, dim in VECTOR_DIMS.items():
            source = self._source(table, name)
            if source is None:
                if name in REQUIRED:
                    raise DatasetError(f"{path}: no column for field {name} (looked for {fmt.FIELD_SOURCES[name]})")
                continue
            cols[name] = vector_column(table, source, dim, path)

        instruction = self._instruction(table, row, path)
        flags = {}
        derived = []
        for flag in ("is_first", "is_last", "is_terminal"):
            source = self._source(table, flag)
            if source is not None:
                flags[flag] = vector_column(table, source, 1, path)[:, 0].astype(bool)
            else:
                derived.append(flag)
        flags.setdefault("is_first", np.arange(T) == 0)
        flags.setdefault("is_last", np.arange(T) == T - 1)
        flags.setdefault("is_terminal", flags["is_last"].copy())
        success = self._success(table, row, path)
        scalars = {}
        for name in ("reward", "discount"):
            source = self._source(table, name)
            if source is not None:
                scalars[name] = vector_column(table, source, 1, path)[:, 0].astype(np.float32)
            else:
                derived.append(name)
        scalars.setdefault("reward", np.where(flags["is_last"], float(success), 0.0).astype(np.float32))
        scalars.setdefault("discount", np.ones(T, np.float32))

        if images:
            imgs = {}
            for cam in CAMERA_NAMES:
                key = self.video_keys[cam]
                file, start = self._video_file(row, key)
                try:
                    imgs[cam] = decode_video(file, start, T, self.fps, field=key)
                except VideoError as exc:
                    raise DatasetError(str(exc)) from exc
        else:
            imgs = {cam: np.zeros((T, 0, 0, 3), np.uint8) for cam in CAMERA_NAMES}

        gt = self._ground_truth(table, row, path, T, masks) if ground_truth else None
        metadata = {k.split("/", 1)[1]: v for k, v in row.items() if k.startswith("vidplan/")}
        metadata["episode_index"] = int(row["episode_index"])
        if derived:
            metadata["derived_fields"] = derived
        action = np.concatenate([cols["action/cartesian_position"], cols["action/gripper_position"]], 1)
        return Episode(
            images=imgs,
            cartesian_position=cols["observation/cartesian_position"],
            gripper_position=cols["observation/gripper_position"],
            joint_position=cols["observation/joint_position"],
            action=action,
            language_instruction=instruction,
            is_first=flags["is_first"],
            is_last=flags["is_last"],
            is_terminal=flags["is_terminal"],
            reward=scalars["reward"],
            discount=scalars["discount"],
            success=success,
            ground_truth=gt,
            action_joint_position=cols.get("action/joint_position"),
            metadata=metadata,
        )

    def _source(self, table: pa.Table, field: str) -> str | None:
        for name in fmt.FIELD_SOURCES[field]:
            if name in table.column_names:
                return name
        return None

    def _instruction(self, table: pa.Table, row: dict, path: Path) -> str:
        if "language_instruction" in table.column_names:
            text = table.column("language_instruction")[0].as_py()
            if isinstance(text, list):
                text = text[0] if text else ""
            if text:
                return str(text)
        if "task_index" in table.column_names and self.tasks:
            return self.tasks.get(int(table.column("task_index")[0].as_py()), "")
        tasks = row.get("tasks") or []
        if tasks:
            return str(tasks[0])
        raise DatasetError(f"{path}: no language_instruction column, task_index or episode task")

    def _success(self, table: pa.Table, row: dict, path: Path) -> bool:
        if "is_episode_successful" in table.column_names:
            return bool(vector_column(table, "is_episode_successful", 1, path)[0, 0])
        if "success" in row:
            return bool(row["success"])
        if "reward" in table.column_names:
            return bool(vector_column(table, "reward", 1, path).max() > 0)
        return False

    def _ground_truth(self, table: pa.Table, row: dict, path: Path, T: int, with_masks: bool) -> GroundTruth | None:
        if fmt.GT_POSES not in table.column_names:
            return None
        names = list(row.get("ground_truth/object_names") or [])
        poses = vector_column(table, fmt.GT_POSES, fmt.MAX_GT_OBJECTS * 7, path).reshape(T, fmt.MAX_GT_OBJECTS, 7)
        masks = {}
        for cam in CAMERA_NAMES if with_masks else ():
            key = fmt.GT_MASK_KEYS[cam]
            if key not in table.column_names:
                raise DatasetError(f"{path}: column {key} missing while {fmt.GT_POSES} is present")
            decoded = []
            for i, cell in enumerate(table.column(key).to_pylist()):
                img = cv2.imdecode(np.frombuffer(cell["bytes"], np.uint8), cv2.IMREAD_GRAYSCALE) if cell else None
                if img is None:
                    raise DatasetError(f"{path}: {key} frame {i} is not a decodable PNG")
                decoded.append(img > 127)
            masks[cam] = np.stack(decoded)
        return GroundTruth(
            object_names=names,
            target_index=int(row.get("ground_truth/target_index", 0)),
            object_poses=poses[:, : len(names)],
            target_masks=masks,
        )


def read_episode_rows(root: Path) -> list[dict]:
    """All rows of a v3 dataset's ``meta/episodes/*/*.parquet`` files, in file order (maybe empty)."""
    rows: list[dict] = []
    for path in sorted((Path(root) / "meta" / "episodes").glob("chunk-*/file-*.parquet")):
        try:
            rows.extend(pq.read_table(path).to_pylist())
        except Exception as exc:  # noqa: BLE001 - any parquet failure means the same thing here
            raise DatasetError(f"{path}: unreadable episode metadata ({exc})") from exc
    return rows


def read_episode_extras(root: Path) -> dict[int, dict]:
    """Our per-episode extras (``meta/vidplan/episodes/*/*.json``: ``success``, ``vidplan/<key>``,
    ``ground_truth/...``) by episode index; empty for other datasets and for our older ones, whose episode
    metadata rows carry the same keys as columns."""
    extras: dict[int, dict] = {}
    for path in sorted((Path(root) / "meta" / "vidplan" / "episodes").glob("chunk-*/file-*.json")):
        try:
            extra = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{path}: unreadable episode extras ({exc})") from exc
        extras[int(extra.pop("episode_index"))] = extra
    return extras


def read_vidplan_info(root: Path, info: dict) -> dict:
    """Our recording options of a dataset: ``meta/vidplan/info.json``, else (older datasets) ``info["vidplan"]``."""
    path = Path(root) / fmt.VIDPLAN_INFO_PATH
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}: not valid JSON ({exc})") from exc
    return dict(info.get("vidplan", {}))


def vector_column(table: pa.Table, name: str, dim: int, path: Path) -> np.ndarray:
    """Column ``name`` as ``(T, dim)`` float32 (bool columns as 0/1), checking its length."""
    col = table.column(name).combine_chunks()
    T = table.num_rows
    if pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type):
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        if T and not np.all(lengths == dim):
            bad = int(lengths[lengths != dim][0])
            raise DatasetError(f"{path}: field {name} has vectors of length {bad}, expected {dim}")
        values = col.flatten().to_numpy(zero_copy_only=False)
    else:
        if dim != 1:
            raise DatasetError(f"{path}: field {name} is a scalar column, expected vectors of length {dim}")
        values = col.to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float32).reshape(T, dim)
