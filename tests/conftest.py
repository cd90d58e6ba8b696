"""Shared fixtures: a few short simulated episodes, made once per test session."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch

from vidplan_server.sim.episode import EpisodeConfig, run_episode
from vidplan_server.sim.scene import SimScene

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n 2` on 2 cores: one intra-op thread per worker. Two workers with two spinning OpenMP
    # threads each oversubscribe the cores, which slowed training steps 3-7x when measured.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def sim_scene():
    scene = SimScene()
    yield scene
    scene.close()


@pytest.fixture(scope="session")
def short_episodes(sim_scene):
    """Two rendered 64x64 episodes cut at 24 steps (one place, one pick task)."""
    config = replace(EpisodeConfig(), max_steps=24, imperfect_fraction=0.0)
    return [run_episode(seed, config, scene=sim_scene) for seed in (3, 5)]


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, short_episodes):
    """The two short episodes written as a LeRobot v3.0 dataset."""
    from tests.helpers import write_dataset

    return write_dataset(tmp_path_factory.mktemp("tiny") / "ds", short_episodes)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_dataset):
    """A checkpoint bundle with codec, world and flow_map trained for a few steps with the tiny preset."""
    from vidplan_server.cli import main

    out = tmp_path_factory.mktemp("bundle") / "ckpt"
    for stage in ("codec", "world", "flowmap"):
        code = main(
            [
                "train",
                stage,
                "--data",
                str(tiny_dataset),
                "--out",
                str(out),
                "--preset",
                "tiny",
                "--steps",
                "4",
                "--quiet",
            ]
        )
        assert code == 0, stage
    return out


@pytest.fixture(scope="session")
def tiny_heads_bundle(tmp_path_factory, tiny_bundle, tiny_dataset):
    """A copy of ``tiny_bundle`` with uq, value and semantic heads trained for a few steps (tiny preset)."""
    import shutil

    from vidplan_server.cli import main

    out = tmp_path_factory.mktemp("heads") / "ckpt"
    shutil.copytree(tiny_bundle, out)
    for stage in ("uq", "value", "semantic"):
        code = main(
            [
                "train",
                stage,
                "--data",
                str(tiny_dataset),
                "--out",
                str(out),
                "--preset",
                "tiny",
                "--steps",
                "4",
                "--quiet",
            ]
        )
        assert code == 0, stage
    return out


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory, short_episodes):
    """The two short episodes marked successful: demonstrations the policy may learn from."""
    from tests.helpers import write_dataset

    return write_dataset(tmp_path_factory.mktemp("demos") / "ds", [replace(ep, success=True) for ep in short_episodes])


@pytest.fixture(scope="session")
def tiny_policy_bundle(tmp_path_factory, tiny_heads_bundle, demo_dataset):
    """A copy of ``tiny_heads_bundle`` with a policy trained for a few steps (tiny preset)."""
    import shutil

    from vidplan_server.cli import main

    out = tmp_path_factory.mktemp("policy") / "ckpt"
    shutil.copytree(tiny_heads_bundle, out)
    code = main(
        [
            "train",
            "policy",
            "--data",
            str(demo_dataset),
            "--out",
            str(out),
            "--preset",
            "tiny",
            "--steps",
            "4",
            "--quiet",
        ]
    )
    assert code == 0
    return out


@pytest.fixture(scope="session")
def tiny_goal_bundle(tmp_path_factory, tiny_policy_bundle, demo_dataset):
    """``tiny_policy_bundle`` plus a goal policy (``--target-map``) warm-started from its policy."""
    import shutil

    from vidplan_server.cli import main

    out = tmp_path_factory.mktemp("goal") / "ckpt"
    shutil.copytree(tiny_policy_bundle, out)
    args = ["train", "policy", "--data", str(demo_dataset), "--out", str(out), "--preset", "tiny", "--steps", "2"]
    assert main([*args, "--target-map", "--init-from", str(tiny_policy_bundle), "--quiet"]) == 0
    return out
