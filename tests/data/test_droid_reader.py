import numpy as np
import pytest

from tests.data.droid_fixtures import (
    INSTRUCTIONS,
    LENGTHS,
    SUCCESS,
    H,
    W,
    expected_lowdim,
    write_droid_legacy,
    write_droid_v3,
)
from vidplan_server.data.reader import EpisodeDataset
from vidplan_server.data.schema import CAMERA_NAMES


@pytest.fixture(params=["v3", "legacy"])
def droid_dataset(request, tmp_path):
    writer = write_droid_v3 if request.param == "v3" else write_droid_legacy
    return request.param, EpisodeDataset(writer(tmp_path / request.param))


@pytest.mark.parametrize("episode", [0, 1])
def test_reader_maps_droid_fields_onto_schema(droid_dataset, episode):
    layout, ds = droid_dataset
    assert ds.layout == ("v3" if layout == "v3" else "v2")
    assert len(ds) == 2
    ep = ds.load_episode(episode)
    e = expected_lowdim(episode)
    assert len(ep) == LENGTHS[episode]
    np.testing.assert_allclose(ep.cartesian_position, e["cartesian"])
    np.testing.assert_allclose(ep.joint_position, e["joints"])
    np.testing.assert_allclose(ep.gripper_position, e["gripper"])
    # The cartesian action comes from the explicit fields, never from DROID's plain `action`.
    np.testing.assert_allclose(ep.action[:, :6], e["action_cartesian"])
    np.testing.assert_allclose(ep.action[:, 6:], e["action_gripper"])
    assert ep.language_instruction == INSTRUCTIONS[episode]
    assert ep.success == SUCCESS[episode]
    assert ep.is_first[0] and ep.is_last[-1] and ep.is_last.sum() == 1
    ep.validate()


def test_reader_decodes_the_right_frames(droid_dataset):
    _, ds = droid_dataset
    ep = ds.load_episode(1)  # in the v3 fixture these frames start mid-file
    for c, cam in enumerate(CAMERA_NAMES):
        frames = ep.images[cam]
        assert frames.shape == (LENGTHS[1], H, W, 3)
        expected = (20 * (LENGTHS[0] + np.arange(LENGTHS[1])) + c) % 256
        np.testing.assert_allclose(frames.reshape(LENGTHS[1], -1).mean(1), expected, atol=3)
