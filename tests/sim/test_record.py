from dataclasses import replace

import numpy as np

from vidplan_server.data.reader import EpisodeDataset
from vidplan_server.sim.episode import EpisodeConfig
from vidplan_server.sim.record import parse_resolution, record


def test_parallel_recording_matches_serial_and_resumes(tmp_path):
    config = replace(EpisodeConfig(), max_steps=30)
    serial = record(tmp_path / "serial", 3, seed=9, config=config, workers=1, progress=False)
    parallel = record(tmp_path / "parallel", 3, seed=9, config=config, workers=2, progress=False)
    assert serial.recorded == parallel.recorded == 3
    a, b = EpisodeDataset(tmp_path / "serial"), EpisodeDataset(tmp_path / "parallel")
    for k in range(3):
        ea, eb = a.load_episode(k, images=False), b.load_episode(k, images=False)
        np.testing.assert_array_equal(ea.action, eb.action)
        np.testing.assert_array_equal(ea.joint_position, eb.joint_position)
        assert ea.language_instruction == eb.language_instruction
    again = record(tmp_path / "parallel", 4, seed=9, config=config, workers=2, progress=False)
    assert (again.recorded, again.skipped) == (1, 3)
    assert len(EpisodeDataset(tmp_path / "parallel")) == 4


def test_parse_resolution():
    assert parse_resolution("180x320") == (180, 320)
    assert parse_resolution("64X64") == (64, 64)
    for bad in ("64", "axb", "7x8", "64x63"):
        try:
            parse_resolution(bad)
        except ValueError as exc:
            assert "--resolution" in str(exc)
        else:
            raise AssertionError(f"{bad} accepted")
