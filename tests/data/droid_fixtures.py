"""Tiny datasets written by the tests themselves in the layouts of the public DROID ports.

* `write_droid_v3`: ``lerobot/droid_1.0.1`` (LeRobot v3.0): two episodes concatenated in one data
  file and one AV1 mp4 per camera (the port's codec), feature names of the port (``observation.images.exterior_1_left``,
  ``action.cartesian_position``, ``is_episode_successful`` ...), ``action`` = joints + gripper.
* `write_droid_legacy`: the older port (LeRobot v2.1): one file per episode, camera keys
  ``observation.images.exterior_image_1_left`` ..., ``action_dict.*`` fields and a plain ``action``
  of joint velocities + gripper that a reader must not take for the cartesian action.

Frame pixels encode the global frame index (value 20 * index) so tests can check which frames
were decoded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vidplan_server.data.video import VideoConfig, encode_video

H, W = 32, 48
# LeRobot's default encoding, as in lerobot/droid_1.0.1 (SVT-AV1, 4:2:0, a keyframe every 2 frames).
AV1 = VideoConfig(codec="libsvtav1", pix_fmt="yuv420p", crf=30, gop=2)
os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration otherwise
LENGTHS = (5, 4)
INSTRUCTIONS = ("put the marker in the cup", "close the drawer")
SUCCESS = (True, False)


def _frames(start: int, n: int, channel_offset: int) -> np.ndarray:
    frames = np.zeros((n, H, W, 3), np.uint8)
    for i in range(n):
        frames[i] = (20 * (start + i) + channel_offset) % 256
    return frames


def _lists(arr: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1).astype(np.float32)), arr.shape[1])


def expected_lowdim(episode: int) -> dict:
    """What the reader should return for ``episode`` of either fixture."""
    start = sum(LENGTHS[:episode])
    n = LENGTHS[episode]
    t = np.arange(start, start + n, dtype=np.float32)[:, None]
    return {
        "cartesian": 0.1 * t + np.arange(6, dtype=np.float32),
        "joints": 0.01 * t + np.arange(7, dtype=np.float32),
        "gripper": (t % 2).astype(np.float32),
        "action_cartesian": 0.2 * t + np.arange(6, dtype=np.float32),
        "action_gripper": ((t + 1) % 2).astype(np.float32),
        "start": start,
        "n": n,
    }


def _columns(episode: int, cartesian_name: str, gripper_name: str, joint_name: str, legacy: bool) -> dict:
    e = expected_lowdim(episode)
    n, start = e["n"], e["start"]
    cols = {
        "is_first": pa.array(np.arange(n) == 0),
        "is_last": pa.array(np.arange(n) == n - 1),
        "is_terminal": pa.array(np.arange(n) == n - 1),
        "language_instruction": pa.array([INSTRUCTIONS[episode]] * n),
        "observation.state.cartesian_position": _lists(e["cartesian"]),
        "observation.state.gripper_position": pa.array(e["gripper"][:, 0]),
        "observation.state.joint_position": _lists(e["joints"]),
        cartesian_name: _lists(e["action_cartesian"]),
        gripper_name: pa.array(e["action_gripper"][:, 0]),
        joint_name: _lists(np.tile(e["joints"][:, :7], 1)),
        "discount": pa.array(np.ones(n, np.float32)),
        "reward": pa.array((np.arange(n) == n - 1).astype(np.float32) * SUCCESS[episode]),
        "timestamp": pa.array((np.arange(n) / 15).astype(np.float32)),
        "frame_index": pa.array(np.arange(n, dtype=np.int64)),
        "episode_index": pa.array(np.full(n, episode, np.int64)),
        "index": pa.array(np.arange(start, start + n, dtype=np.int64)),
        "task_index": pa.array(np.full(n, episode, np.int64)),
    }
    if legacy:
        # RLDS `action`: 6 joint velocities + gripper. Deliberately absurd values.
        cols["action"] = _lists(np.full((n, 7), 99.0, np.float32))
    else:
        cols["action"] = _lists(np.full((n, 8), -99.0, np.float32))  # joints + gripper in the port
        cols["action.original"] = _lists(np.full((n, 7), 99.0, np.float32))
        cols["is_episode_successful"] = pa.array(np.full(n, SUCCESS[episode]))
    return cols


def _info(version: str, data_path: str, video_path: str, video_keys: list[str], names: list[str]) -> dict:
    features = {k: {"dtype": "video", "shape": [H, W, 3], "names": ["height", "width", "channels"]} for k in video_keys}
    for name in names:
        features[name] = {"dtype": "float32", "shape": [1], "names": None}
    return {
        "codebase_version": version,
        "robot_type": "Franka",
        "fps": 15,
        "chunks_size": 1000,
        "total_episodes": 2,
        "total_frames": sum(LENGTHS),
        "data_path": data_path,
        "video_path": video_path,
        "features": features,
        "splits": {"train": "0:2"},
    }


V3_KEYS = ["observation.images.exterior_1_left", "observation.images.exterior_2_left", "observation.images.wrist_left"]
LEGACY_KEYS = [
    "observation.images.exterior_image_1_left",
    "observation.images.exterior_image_2_left",
    "observation.images.wrist_image_left",
]


def write_droid_v3(root: Path) -> Path:
    root = Path(root)
    tables = [
        pa.table(
            _columns(e, "action.cartesian_position", "action.gripper_position", "action.joint_position", legacy=False)
        )
        for e in range(2)
    ]
    table = pa.concat_tables(tables)
    (root / "data/chunk-000").mkdir(parents=True)
    pq.write_table(table, root / "data/chunk-000/file-000.parquet")
    rows = []
    for e in range(2):
        start = sum(LENGTHS[:e])
        row = {
            "episode_index": e,
            "tasks": [INSTRUCTIONS[e]],
            "length": LENGTHS[e],
            "data/chunk_index": 0,
            "data/file_index": 0,
            "dataset_from_index": start,
            "dataset_to_index": start + LENGTHS[e],
        }
        for key in V3_KEYS:
            row.update(
                {
                    f"videos/{key}/chunk_index": 0,
                    f"videos/{key}/file_index": 0,
                    f"videos/{key}/from_timestamp": start / 15,
                    f"videos/{key}/to_timestamp": (start + LENGTHS[e]) / 15,
                }
            )
        rows.append(row)
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "meta/episodes/chunk-000/file-000.parquet")
    pd.DataFrame({"task_index": [0, 1]}, index=pd.Index(list(INSTRUCTIONS), name="task")).to_parquet(
        root / "meta/tasks.parquet"
    )
    for c, key in enumerate(V3_KEYS):
        path = root / f"videos/{key}/chunk-000/file-000.mp4"
        path.parent.mkdir(parents=True)
        encode_video(_frames(0, sum(LENGTHS), c), path, 15, AV1)
    info = _info(
        "v3.0",
        "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        V3_KEYS,
        list(table.column_names),
    )
    (root / "meta/info.json").write_text(json.dumps(info))
    return root


def write_droid_legacy(root: Path) -> Path:
    root = Path(root)
    (root / "data/chunk-000").mkdir(parents=True)
    names: list[str] = []
    for e in range(2):
        table = pa.table(
            _columns(
                e,
                "action_dict.cartesian_position",
                "action_dict.gripper_position",
                "action_dict.joint_position",
                legacy=True,
            )
        )
        names = table.column_names
        pq.write_table(table, root / f"data/chunk-000/episode_{e:06d}.parquet")
        for c, key in enumerate(LEGACY_KEYS):
            path = root / f"videos/chunk-000/{key}/episode_{e:06d}.mp4"
            path.parent.mkdir(parents=True, exist_ok=True)
            encode_video(_frames(sum(LENGTHS[:e]), LENGTHS[e], c), path, 15)
    (root / "meta").mkdir()
    (root / "meta/episodes.jsonl").write_text(
        "\n".join(json.dumps({"episode_index": e, "tasks": [INSTRUCTIONS[e]], "length": LENGTHS[e]}) for e in range(2))
    )
    (root / "meta/tasks.jsonl").write_text(
        "\n".join(json.dumps({"task_index": e, "task": INSTRUCTIONS[e]}) for e in range(2))
    )
    info = _info(
        "v2.1",
        "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        LEGACY_KEYS,
        names,
    )
    (root / "meta/info.json").write_text(json.dumps(info))
    return root
