import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.helpers import write_dataset
from vidplan_server.data import lerobot_format as fmt
from vidplan_server.data.errors import DatasetError
from vidplan_server.data.reader import EpisodeDataset
from vidplan_server.data.schema import CAMERA_NAMES
from vidplan_server.data.writer import DatasetWriter, stage_episode


@pytest.fixture()
def written(tmp_path, short_episodes):
    return write_dataset(tmp_path / "ds", short_episodes)


def test_round_trip_through_disk(written, short_episodes):
    ds = EpisodeDataset(written)
    assert len(ds) == len(short_episodes)
    for k, original in enumerate(short_episodes):
        ep = ds.load_episode(k)
        for field in (
            "cartesian_position",
            "gripper_position",
            "joint_position",
            "action",
            "reward",
            "discount",
            "action_joint_position",
        ):
            np.testing.assert_array_equal(getattr(ep, field), getattr(original, field), err_msg=field)
        for flag in ("is_first", "is_last", "is_terminal"):
            np.testing.assert_array_equal(getattr(ep, flag), getattr(original, flag))
        assert ep.language_instruction == original.language_instruction
        assert ep.success == original.success
        for cam in CAMERA_NAMES:
            err = np.abs(ep.images[cam].astype(int) - original.images[cam].astype(int))
            assert err.mean() < 2.0, cam  # lossy H.264 at CRF 12, 4:4:4
            np.testing.assert_array_equal(ep.ground_truth.target_masks[cam], original.ground_truth.target_masks[cam])
        np.testing.assert_array_equal(ep.ground_truth.object_poses, original.ground_truth.object_poses)
        assert ep.ground_truth.object_names == original.ground_truth.object_names
        assert ep.metadata["seed"] == original.metadata["seed"]


def test_poses_without_masks(written, short_episodes):
    ds = EpisodeDataset(written)
    ep = ds.load_episode(0, images=False, masks=False)
    gt = short_episodes[0].ground_truth
    np.testing.assert_array_equal(ep.ground_truth.object_poses, gt.object_poses)
    assert ep.ground_truth.target_index == gt.target_index
    assert ep.ground_truth.target_masks == {}  # not decoded


def test_layout_is_lerobot_v3(written, short_episodes):
    info = json.loads((written / fmt.INFO_PATH).read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 15
    assert info["total_episodes"] == 2 and info["total_frames"] == sum(len(e) for e in short_episodes)
    assert info["features"]["observation.images.wrist_left"]["dtype"] == "video"
    for key in fmt.VIDEO_KEYS.values():
        assert (written / fmt.VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=1)).is_file()
    data = pq.read_table(written / "data/chunk-000/file-001.parquet")
    assert data.column("index")[0].as_py() == len(short_episodes[0])  # global frame index continues
    assert data.column("episode_index")[0].as_py() == 1
    episodes = pq.read_table(written / "meta/episodes/chunk-000/file-001.parquet").to_pylist()[0]
    assert episodes["dataset_from_index"] == len(short_episodes[0])
    tasks = pq.read_table(written / fmt.TASKS_PATH).to_pandas()
    assert set(tasks.index) == {e.language_instruction for e in short_episodes}
    stats = json.loads((written / fmt.STATS_PATH).read_text())
    assert {"min", "max", "mean", "std", "q01", "q99"} <= set(stats["action.cartesian_position"])
    assert len(stats["action.cartesian_position"]["q99"]) == 6


def test_interrupted_commit_is_invisible_and_resume_continues(tmp_path, short_episodes):
    root = tmp_path / "ds"
    writer = DatasetWriter(root, (64, 64))
    writer.write_episode(short_episodes[0])
    # Simulate a crash after the data file was written but before the episode metadata (commit point).
    staged = stage_episode(short_episodes[1], root)
    (root / "data/chunk-000").mkdir(exist_ok=True)
    (root / "data/chunk-000/file-001.parquet").write_bytes(b"half-written")
    assert staged.folder.is_dir()
    assert len(EpisodeDataset(root)) == 1  # the reader accepts only committed episodes
    writer.close()  # the "crashed" process is gone
    resumed = DatasetWriter(root, (64, 64))
    assert resumed.num_episodes == 1
    assert not (root / ".staging").exists()  # stale staging cleaned
    resumed.write_episode(short_episodes[1])
    ds = EpisodeDataset(root)
    assert len(ds) == 2
    assert ds.load_episode(1).language_instruction == short_episodes[1].language_instruction


def test_writer_refuses_incompatible_dataset(written):
    with pytest.raises(DatasetError, match="resolution"):
        DatasetWriter(written, (180, 320))
    with pytest.raises(DatasetError, match="split"):
        DatasetWriter(written, (64, 64), info_extra={"split": "ood"})


def test_writer_refuses_non_dataset_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not empty"):
        DatasetWriter(tmp_path, (64, 64))


def test_one_writer_per_dataset(tmp_path):
    first = DatasetWriter(tmp_path / "ds", (64, 64))
    with pytest.raises(DatasetError, match="another process is writing"):
        DatasetWriter(tmp_path / "ds", (64, 64))
    first.close()
    DatasetWriter(tmp_path / "ds", (64, 64)).close()  # free again once the first writer is closed
