"""Our datasets against the layout LeRobot itself writes, so LeRobot can read them and append to them.

The ``lerobot`` package cannot be installed beside our torch, so the rules below restate what its writer does
(``lerobot/datasets/dataset_writer.py`` ``save_episode``, ``dataset_metadata.py`` ``save_episode`` and
``_flush_metadata_buffer``, ``compute_stats.py`` ``compute_episode_stats`` and ``_assert_type_and_shape``,
``utils.py`` ``DatasetInfo``), and :func:`lerobot_episode_row` builds the episode-metadata row LeRobot would add
for one of our episodes. LeRobot loads every ``meta/episodes`` file as one table, so its rows and ours must have
the same columns and types.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import write_dataset
from vidplan_server.data import lerobot_format as fmt
from vidplan_server.data.reader import EpisodeDataset

# compute_stats.py: DEFAULT_QUANTILES = [0.01, 0.10, 0.50, 0.90, 0.99], keys f"q{int(q * 100):02d}"; get_statistics
# returns min, max, mean, std, count, then the quantiles.
LEROBOT_STATS = ("min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99")
# utils.py DatasetInfo: the fields it keeps (others are dropped, with a warning, when it rewrites info.json).
LEROBOT_INFO_FIELDS = {
    "codebase_version",
    "fps",
    "features",
    "total_episodes",
    "total_frames",
    "total_tasks",
    "chunks_size",
    "data_files_size_in_mb",
    "video_files_size_in_mb",
    "data_path",
    "video_path",
    "robot_type",
    "splits",
    "tools",
}


def stat_shape(feature: dict) -> tuple[int, ...]:
    """compute_episode_stats: images and videos per channel, (C, 1, 1); other features per element, (D,)."""
    if feature["dtype"] in ("image", "video"):
        return (int(feature["shape"][-1]), 1, 1)
    return (int(np.prod(feature["shape"])),)


def lerobot_episode_row(info: dict, index: int, length: int, task: str) -> pa.Table:
    """The row LeRobot's save_episode writes for an episode of a dataset with these ``features``: its metadata
    (episode_index, tasks, length; data and video file locations), ``flatten_dict({"stats": ep_stats})`` for every
    feature but strings, then the metadata file location, through ``pa.Table.from_pydict`` of ``.tolist()``
    values (``_flush_metadata_buffer``)."""
    row: dict = {
        "episode_index": index,
        "tasks": [task],
        "length": length,
        "data/chunk_index": 0,
        "data/file_index": index,
        "dataset_from_index": 0,
        "dataset_to_index": length,
    }
    features = info["features"]
    for key, ft in features.items():
        if ft["dtype"] == "video":
            row.update(
                {
                    f"videos/{key}/chunk_index": 0,
                    f"videos/{key}/file_index": index,
                    f"videos/{key}/from_timestamp": 0.0,
                    f"videos/{key}/to_timestamp": length / info["fps"],
                }
            )
    for key, ft in features.items():
        if ft["dtype"] in ("string", "language"):
            continue
        for stat in LEROBOT_STATS:
            value = np.array([length]) if stat == "count" else np.full(stat_shape(ft), 0.5)
            row[f"stats/{key}/{stat}"] = value.tolist()
    row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": index})
    return pa.Table.from_pydict({k: [v] for k, v in row.items()})


def assert_lerobot_stats(stats: dict, feature_key: str) -> None:
    """compute_stats._validate_stat_value: arrays of at least 1 dimension, count (1,), and for a key that contains
    "image" shape (3, 1, 1) or (1, 1, 1)."""
    for stat, value in stats.items():
        arr = np.atleast_1d(np.array(value))  # io_utils.cast_stats_to_numpy
        assert arr.ndim >= 1, (feature_key, stat)
        if stat == "count":
            assert arr.shape == (1,), (feature_key, stat, arr.shape)
        elif "image" in feature_key:
            assert arr.shape in ((3, 1, 1), (1, 1, 1)), (feature_key, stat, arr.shape)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, short_episodes) -> Path:
    return write_dataset(tmp_path_factory.mktemp("lerobot") / "ds", short_episodes, split="val")


def test_episode_metadata_has_exactly_lerobots_columns_and_types(dataset, short_episodes):
    info = json.loads((dataset / fmt.INFO_PATH).read_text())
    for index, episode in enumerate(short_episodes):
        ours = pq.read_table(dataset / fmt.EPISODES_PATH.format(chunk_index=0, file_index=index))
        theirs = lerobot_episode_row(info, index, len(episode), episode.language_instruction)
        assert ours.schema.names == theirs.schema.names
        assert ours.schema == theirs.schema
        # What LeRobot's loader does with all meta/episodes files, ours and the one it appends.
        assert pa.concat_tables([ours, theirs]).num_rows == 2


def test_every_numeric_feature_has_stats_in_lerobots_shapes(dataset):
    info = json.loads((dataset / fmt.INFO_PATH).read_text())
    row = pq.read_table(dataset / fmt.EPISODES_PATH.format(chunk_index=0, file_index=0)).to_pylist()[0]
    stats_json = json.loads((dataset / fmt.STATS_PATH).read_text())
    for key, ft in info["features"].items():
        if ft["dtype"] == "string":
            assert not any(k.startswith(f"stats/{key}/") for k in row)
            continue
        episode_stats = {stat: row[f"stats/{key}/{stat}"] for stat in LEROBOT_STATS}
        for stats in (episode_stats, stats_json[key]):
            assert set(stats) == set(LEROBOT_STATS), key
            assert_lerobot_stats(stats, key)
            for stat in LEROBOT_STATS:
                if stat != "count":
                    assert np.shape(stats[stat]) == stat_shape(ft), (key, stat)
    video = stats_json["observation.images.wrist_left"]
    assert np.shape(video["mean"]) == (3, 1, 1) and 0.0 <= np.min(video["min"]) <= np.max(video["max"]) <= 1.0
    assert np.all(np.array(video["q01"]) <= np.array(video["q99"]))


def test_info_json_holds_only_what_lerobot_keeps_and_ours_lives_under_meta_vidplan(dataset):
    info = json.loads((dataset / fmt.INFO_PATH).read_text())
    assert set(info) <= LEROBOT_INFO_FIELDS
    assert json.loads((dataset / fmt.VIDPLAN_INFO_PATH).read_text()) == {"split": "val"}
    extras = json.loads((dataset / fmt.VIDPLAN_EPISODES_PATH.format(chunk_index=0, file_index=0)).read_text())
    assert extras["episode_index"] == 0 and "vidplan/seed" in extras and extras["ground_truth/object_names"]
    # LeRobot globs meta/episodes/*/*.parquet only: our extras are not mistaken for episode metadata.
    assert sorted(p.name for p in (dataset / "meta" / "episodes").rglob("*") if p.is_file()) == [
        "file-000.parquet",
        "file-001.parquet",
    ]


def test_our_older_layout_still_reads(dataset, short_episodes, tmp_path):
    """Older datasets: extras as episode-metadata columns, flat image stats, options in info.json["vidplan"]."""
    old = tmp_path / "old"
    shutil.copytree(dataset, old)
    for index in range(len(short_episodes)):
        path = old / fmt.EPISODES_PATH.format(chunk_index=0, file_index=index)
        row = pq.read_table(path).to_pylist()[0]
        extras_path = old / fmt.VIDPLAN_EPISODES_PATH.format(chunk_index=0, file_index=index)
        extras = json.loads(extras_path.read_text())
        extras.pop("episode_index")
        row.update(extras)
        for key in fmt.VIDEO_KEYS.values():
            for stat in ("min", "max", "mean", "std"):
                row[f"stats/{key}/{stat}"] = np.ravel(row[f"stats/{key}/{stat}"]).tolist()
        pq.write_table(pa.Table.from_pylist([row]), path)
    info = json.loads((old / fmt.INFO_PATH).read_text())
    info["vidplan"] = json.loads((old / fmt.VIDPLAN_INFO_PATH).read_text())
    (old / fmt.INFO_PATH).write_text(json.dumps(info))
    shutil.rmtree(old / "meta" / "vidplan")

    ds = EpisodeDataset(old)
    assert ds.vidplan_info == {"split": "val"}
    for index, original in enumerate(short_episodes):
        ep = ds.load_episode(index, images=False)
        assert ep.success == original.success and ep.metadata["seed"] == original.metadata["seed"]
        assert ep.ground_truth.object_names == original.ground_truth.object_names
    # ... and a writer resuming on it merges the flat image stats with new ones.
    from vidplan_server.data.writer import DatasetWriter

    with DatasetWriter(old, (64, 64), info_extra={"split": "val"}) as writer:
        writer.write_episode(short_episodes[0])
        writer.finalize()
    stats = json.loads((old / fmt.STATS_PATH).read_text())
    assert np.shape(stats["observation.images.wrist_left"]["mean"]) == (3, 1, 1)
    assert len(EpisodeDataset(old)) == 3
