"""LeRobot dataset layout (v3.0) and the explicit mapping of DROID ports' feature names.

Layout written and read (as the public DROID port ``lerobot/droid_1.0.1``)::

    meta/info.json                                   schema, fps, path templates, totals
    meta/stats.json                                  per-feature statistics (incl. q01 / q99)
    meta/tasks.parquet                               task string (index) -> task_index
    meta/episodes/chunk-XXX/file-XXX.parquet         one row per episode: length, file locations, stats
    data/chunk-XXX/file-XXX.parquet                  one row per frame
    videos/<video_key>/chunk-XXX/file-XXX.mp4        frames of one camera
    meta/vidplan/info.json                           ours: recording options (split, ...)
    meta/vidplan/episodes/chunk-XXX/file-XXX.json    ours: per-episode extras (seed, ground-truth object names, ...)

LeRobot appends to such a dataset: its episode metadata rows have exactly LeRobot's columns (file locations and
``stats/<feature>/<stat>`` for every feature but strings, in its shapes: see :mod:`vidplan_server.data.stats`),
since LeRobot loads all ``meta/episodes`` files as one table and a column only some files have breaks that. Our
own per-episode and per-dataset extras live under ``meta/vidplan/``, which LeRobot leaves alone (it rewrites
``info.json`` without keys it does not know). Older VidPlan datasets kept them as episode-metadata columns and in
``info.json["vidplan"]``; the reader reads both.

VidPlan writes one episode per data / video / episode-metadata file (file index = episode
index mod 1000). The format allows several episodes per file (LeRobot concatenates them); the
reader follows the episode metadata, so it reads both, and DROID's older v2.x layout too.

Feature names on disk are those of the ``lerobot/droid_1.0.1`` port; `FIELD_SOURCES` maps each
field of our schema to the names the known ports use, tried in order.
"""

from __future__ import annotations

from vidplan_server.data.schema import CAMERA_NAMES

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
FPS = 15
ROBOT_TYPE = "Franka"

INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
VIDPLAN_INFO_PATH = "meta/vidplan/info.json"
VIDPLAN_EPISODES_PATH = "meta/vidplan/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.json"

# Our camera name -> the droid_1.0.1 port's video key (which we also write).
VIDEO_KEYS = {
    "exterior_image_1_left": "observation.images.exterior_1_left",
    "exterior_image_2_left": "observation.images.exterior_2_left",
    "wrist_image_left": "observation.images.wrist_left",
}
# The older port (cadene/droid_1.0.1, LeRobot v2.x) kept the RLDS camera names.
LEGACY_VIDEO_KEYS = {cam: f"observation.images.{cam}" for cam in CAMERA_NAMES}

# Schema field -> candidate column names, first match wins. DROID's plain `action` column is
# joint velocities (older port) or joint positions + gripper (new port) and is never read as
# the cartesian action: only the explicit cartesian fields are.
FIELD_SOURCES: dict[str, tuple[str, ...]] = {
    "observation/cartesian_position": ("observation.state.cartesian_position", "observation.cartesian_position"),
    "observation/gripper_position": ("observation.state.gripper_position", "observation.gripper_position"),
    "observation/joint_position": ("observation.state.joint_position", "observation.joint_position"),
    "action/cartesian_position": ("action.cartesian_position", "action_dict.cartesian_position"),
    "action/gripper_position": ("action.gripper_position", "action_dict.gripper_position"),
    "action/joint_position": ("action.joint_position", "action_dict.joint_position"),
    "language_instruction": ("language_instruction",),
    "is_first": ("is_first",),
    "is_last": ("is_last",),
    "is_terminal": ("is_terminal",),
    "reward": ("reward",),
    "discount": ("discount",),
    "success": ("is_episode_successful",),
}

GT_POSES = "ground_truth.object_poses"
MAX_GT_OBJECTS = 8  # target + up to 7 distractors; unused rows are NaN
GT_MASK_KEYS = {cam: f"ground_truth.target_mask.{VIDEO_KEYS[cam].rsplit('.', 1)[1]}" for cam in CAMERA_NAMES}

INDEX_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")


def _vec(dim: int, axes: list[str] | None = None, dtype: str = "float32") -> dict:
    return {"dtype": dtype, "shape": [dim], "names": {"axes": axes} if axes else None}


POSE_AXES = ["x", "y", "z", "roll", "pitch", "yaw"]
JOINT_AXES = [f"joint_{i}" for i in range(7)]


def feature_spec(height: int, width: int, video_info: dict) -> dict:
    """info.json ``features`` of a VidPlan dataset (DROID port names + our ground truth)."""
    features: dict = {}
    for key in VIDEO_KEYS.values():
        features[key] = {
            "dtype": "video",
            "shape": [height, width, 3],
            "names": ["height", "width", "channels"],
            "info": video_info,
        }
    features.update(
        {
            "observation.state.cartesian_position": _vec(6, POSE_AXES),
            "observation.state.gripper_position": _vec(1, ["gripper"]),
            "observation.state.joint_position": _vec(7, JOINT_AXES),
            "observation.state": _vec(8, JOINT_AXES + ["gripper"]),
            "action.cartesian_position": _vec(6, POSE_AXES),
            "action.gripper_position": _vec(1, ["gripper"]),
            "action.joint_position": _vec(7, JOINT_AXES),
            "action": _vec(8, JOINT_AXES + ["gripper"]),
            "language_instruction": {"dtype": "string", "shape": [1], "names": None},
            "is_first": {"dtype": "bool", "shape": [1], "names": None},
            "is_last": {"dtype": "bool", "shape": [1], "names": None},
            "is_terminal": {"dtype": "bool", "shape": [1], "names": None},
            "is_episode_successful": {"dtype": "bool", "shape": [1], "names": None},
            "reward": {"dtype": "float32", "shape": [1], "names": None},
            "discount": {"dtype": "float32", "shape": [1], "names": None},
            GT_POSES: {
                "dtype": "float32",
                "shape": [MAX_GT_OBJECTS * 7],
                "names": {
                    "axes": [
                        f"obj{i}_{a}" for i in range(MAX_GT_OBJECTS) for a in ("x", "y", "z", "qx", "qy", "qz", "qw")
                    ]
                },
            },
        }
    )
    for key in GT_MASK_KEYS.values():
        features[key] = {"dtype": "image", "shape": [height, width, 1], "names": ["height", "width", "channels"]}
    for name, dtype in (
        ("timestamp", "float32"),
        ("frame_index", "int64"),
        ("episode_index", "int64"),
        ("index", "int64"),
        ("task_index", "int64"),
    ):
        features[name] = {"dtype": dtype, "shape": [1], "names": None}
    return features
