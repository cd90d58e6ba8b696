"""Bad paths, missing files, truncated videos and schema mismatches fail with file + field."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.data.droid_fixtures import write_droid_v3
from vidplan_server.data.errors import DatasetError
from vidplan_server.data.reader import EpisodeDataset

DATA = "data/chunk-000/file-000.parquet"
VIDEO = "videos/observation.images.wrist_left/chunk-000/file-000.mp4"


@pytest.fixture()
def droid(tmp_path):
    return write_droid_v3(tmp_path / "droid")


def test_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="nothere: dataset folder not found"):
        EpisodeDataset(tmp_path / "nothere")


def test_missing_info(droid):
    (droid / "meta/info.json").unlink()
    with pytest.raises(DatasetError, match="info.json: missing"):
        EpisodeDataset(droid)


def test_corrupt_info(droid):
    (droid / "meta/info.json").write_text("{not json")
    with pytest.raises(DatasetError, match="info.json: not valid JSON"):
        EpisodeDataset(droid)


def test_unsupported_version(droid):
    info = json.loads((droid / "meta/info.json").read_text())
    info["codebase_version"] = "v1.6"
    (droid / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="codebase_version 'v1.6'"):
        EpisodeDataset(droid)


def test_missing_camera_feature(droid):
    info = json.loads((droid / "meta/info.json").read_text())
    del info["features"]["observation.images.wrist_left"]
    (droid / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="wrist_image_left"):
        EpisodeDataset(droid)


def test_missing_data_file(droid):
    (droid / DATA).unlink()
    with pytest.raises(DatasetError, match="file-000.parquet: data file missing"):
        EpisodeDataset(droid).load_episode(0)


def test_corrupt_parquet(droid):
    (droid / DATA).write_bytes(b"PAR1 garbage")
    with pytest.raises(DatasetError, match="file-000.parquet: unreadable parquet"):
        EpisodeDataset(droid).load_episode(0)


def test_missing_video(droid):
    (droid / VIDEO).unlink()
    with pytest.raises(DatasetError, match="wrist_left.*video file missing"):
        EpisodeDataset(droid).load_episode(0)


def test_truncated_video(droid):
    data = (droid / VIDEO).read_bytes()
    (droid / VIDEO).write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"file-000.mp4 \(observation.images.wrist_left\)"):
        EpisodeDataset(droid).load_episode(1)


def test_video_shorter_than_metadata(droid):
    rows = pq.read_table(droid / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    rows[1]["videos/observation.images.wrist_left/from_timestamp"] = 8 / 15  # only one frame left
    pq.write_table(pa.Table.from_pylist(rows), droid / "meta/episodes/chunk-000/file-000.parquet")
    with pytest.raises(DatasetError, match="expected 4 frames.*found 1"):
        EpisodeDataset(droid).load_episode(1)


def _rewrite_data(droid, fn):
    table = pq.read_table(droid / DATA)
    pq.write_table(fn(table), droid / DATA)


def test_missing_required_column(droid):
    _rewrite_data(droid, lambda t: t.drop(["action.cartesian_position"]))
    with pytest.raises(DatasetError, match="no column for field action/cartesian_position"):
        EpisodeDataset(droid).load_episode(0)


def test_wrong_vector_length(droid):
    def shorten(t):
        col = t.column("observation.state.joint_position").combine_chunks()
        short = pa.FixedSizeListArray.from_arrays(col.flatten().slice(0, len(t) * 6), 6)
        return t.set_column(
            t.column_names.index("observation.state.joint_position"), "observation.state.joint_position", short
        )

    _rewrite_data(droid, shorten)
    with pytest.raises(DatasetError, match="observation.state.joint_position has vectors of length 6, expected 7"):
        EpisodeDataset(droid).load_episode(0)


def test_row_count_mismatch(droid):
    _rewrite_data(droid, lambda t: t.slice(1))
    with pytest.raises(DatasetError, match="episode 0 has 4 rows, metadata says 5"):
        EpisodeDataset(droid).load_episode(0)


def test_episode_out_of_range(droid):
    with pytest.raises(IndexError, match="holds 2 episodes"):
        EpisodeDataset(droid).load_episode(5)
