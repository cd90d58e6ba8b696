"""Shared fixtures: a few short simulated episodes, made once per test session."""

from __future__ import annotations

from dataclasses import replace

import pytest

from vidplan_server.data.sim.episode import EpisodeConfig, run_episode
from vidplan_server.data.sim.scene import SimScene


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
