"""The load test's robots pace themselves like RobotLoop: checked exactly on a virtual clock against a fake server."""

from __future__ import annotations

import math

import pytest

from tests.apps.loadtest_fakes import FakePlanServer, VirtualClock, pb_cameras, synthetic_episode
from vidplan_server.apps.loadtest.app import robot_settings
from vidplan_server.apps.loadtest.config import LoadTestConfig
from vidplan_server.apps.loadtest.driver import run_robots
from vidplan_server.apps.loadtest.replay import LATE, USED

DT = 1 / 15
INTERVAL = 8 * DT


def _run(server: FakePlanServer, clock: VirtualClock, robots: int, duration_s: float, episodes=None, **config):
    cfg = LoadTestConfig(target="fake:1", robots=robots, duration_s=duration_s, warmup_s=0.0, **config)
    episodes = episodes or [synthetic_episode(40)]
    settings = robot_settings(cfg, server.info(), episodes[0].instruction)

    async def go():
        return await run_robots(
            robots,
            episodes,
            settings,
            server.connect,
            clock,
            cfg.duration_s,
            cfg.warmup_s,
            cfg.timeout_s,
            cfg.budget_ms,
            "test",
        )

    return clock.run(go())


def test_a_robot_asks_once_per_open_loop_horizon_when_the_server_keeps_up():
    clock = VirtualClock(start_s=100.0)
    server = FakePlanServer(clock, service_s=0.05)
    recorder, ticks = _run(server, clock, robots=1, duration_s=5.0)
    sent = [r.observation.timestamp_s - 100.0 for r in server.requests]
    # Tick k is at k / 15 s; a chunk answering tick k covers rows for ticks k+1 .. k+8, so the next request is at k+8.
    assert sent == pytest.approx([k * INTERVAL for k in range(len(sent))])
    assert len(sent) == math.ceil(5.0 / INTERVAL)
    assert ticks == [75]  # 5 s at 15 Hz
    assert recorder.uses[USED] == len(sent)
    assert recorder.summary(5.0)["latency_ms"]["max"] == pytest.approx(50.0, rel=1e-3)


def test_robots_start_staggered_over_one_interval_each_on_its_own_session():
    clock = VirtualClock(start_s=0.0)
    server = FakePlanServer(clock, service_s=0.0)
    _run(server, clock, robots=4, duration_s=2.0)
    first = {}
    for r in server.requests:
        first.setdefault(r.session_id, r.observation.timestamp_s)
    assert sorted(first) == [f"test-r{k}" for k in range(4)]
    assert [first[f"test-r{k}"] for k in range(4)] == pytest.approx([k * INTERVAL / 4 for k in range(4)])
    for session in first:  # sequence numbers count up per session from 1
        assert [r.sequence for r in server.requests if r.session_id == session] == list(
            range(1, 1 + sum(r.session_id == session for r in server.requests))
        )


def test_a_slow_server_makes_the_robot_ask_again_at_the_first_tick_after_a_late_reply():
    clock = VirtualClock(start_s=0.0)
    server = FakePlanServer(clock, service_s=0.99)  # longer than the 0.533 s horizon: every chunk arrives too late
    recorder, _ = _run(server, clock, robots=1, duration_s=4.0, deadline_ms=2000)
    sent = [r.observation.timestamp_s for r in server.requests]
    assert sent == pytest.approx([0.0, 1.0, 2.0, 3.0])  # replies at 0.99 s after each: the next tick is 15 ticks on
    assert recorder.uses[LATE] == 4 and recorder.uses[USED] == 0
    # Coordinated omission: each 990 ms reply stands for the robot's requests at 533 ms intervals it could not send.
    assert recorder.corrected.count == 8 and recorder.raw.count == 4


def test_each_request_carries_the_episode_step_of_its_tick_and_the_history_the_model_sees():
    clock = VirtualClock(start_s=0.0)
    server = FakePlanServer(clock, service_s=0.01, history=2)  # T = 2: one earlier observation, 3 ticks back
    episode = synthetic_episode(10)  # shorter than the run: the replay loops
    _run(server, clock, robots=1, duration_s=3.0, episodes=[episode])
    for request in server.requests:
        tick = round(request.observation.timestamp_s / DT)
        assert request.observation.state.gripper_position == pytest.approx((tick % 10) / 10)
        if tick >= 3:
            (earlier,) = request.history
            assert earlier.timestamp_s == pytest.approx((tick - 3) * DT)
            assert list(earlier.frames) == list(episode.observations[(tick - 3) % 10].frames)
        else:
            assert len(request.history) == 0
        assert request.options.deadline_ms == 533
    assert max(round(r.observation.timestamp_s / DT) for r in server.requests) > 10  # it went round the episode


def test_a_run_ends_within_its_duration_plus_one_timeout_even_when_the_server_never_answers_in_time():
    clock = VirtualClock(start_s=0.0)
    server = FakePlanServer(clock, service_s=50.0)
    recorder, _ = _run(server, clock, robots=2, duration_s=3.0, deadline_ms=500, timeout_slack_s=0.5)
    assert clock.now() <= 3.0 + 1.0 + 1e-9
    assert recorder.errors == {"DEADLINE_EXCEEDED": recorder.requests}
    assert recorder.deadline_misses == recorder.requests > 0


@pytest.mark.parametrize("layout", ["v3", "legacy"])
def test_droid_ports_replay_through_the_same_reader(tmp_path, layout):
    from vidplan_client.convert import decode_image

    from tests.data.droid_fixtures import (
        INSTRUCTIONS,
        LENGTHS,
        H,
        W,
        expected_lowdim,
        write_droid_legacy,
        write_droid_v3,
    )
    from vidplan_server.apps.loadtest.replay import load_episodes

    root = (write_droid_v3 if layout == "v3" else write_droid_legacy)(tmp_path / "droid")
    episodes = load_episodes(root, count=5)  # the port holds two
    assert [e.instruction for e in episodes] == list(INSTRUCTIONS)
    assert [len(e) for e in episodes] == list(LENGTHS)
    for k, episode in enumerate(episodes):
        expected = expected_lowdim(k)
        for t, obs in enumerate(episode.observations):
            assert list(obs.state.cartesian_position) == pytest.approx(expected["cartesian"][t], abs=1e-5)
            assert [f.camera for f in obs.frames] == list(pb_cameras())
            assert decode_image(obs.frames[0]).shape == (H, W, 3)  # sent at the port's size; the server resizes
