"""``--ramp`` against a fake server of known capacity on a virtual clock: it stops at the first count that fails."""

from __future__ import annotations

import json
import math

from tests.apps.loadtest_fakes import FakePlanServer, VirtualClock, synthetic_episode
from vidplan_server.apps.loadtest.app import run_loadtest
from vidplan_server.apps.loadtest.config import LoadTestConfig


def test_ramp_stops_at_the_first_robot_count_the_server_cannot_hold(tmp_path):
    # One planner at 0.1 s per plan answers 10 plans/s; a robot re-planning every 8 steps at 15 Hz needs 1.875/s.
    service_s, per_robot = 0.1, 15 / 8
    fits = math.floor((1 / service_s) / per_robot)  # 5 robots (9.4 plans/s) fit, 6 (11.25/s) do not
    clock = VirtualClock(start_s=1000.0)
    server = FakePlanServer(clock, service_s=service_s, max_queue=64)
    config = LoadTestConfig(
        target="fake:1", robots=8, duration_s=12.0, warmup_s=3.0, ramp=True, deadline_ms=350, timeout_slack_s=2.0
    )
    report = clock.run(
        run_loadtest(config, [synthetic_episode(30)], tmp_path, connect=server.connect, clock=clock, progress=False)
    )
    assert report["ramp"]["max_robots_held"] == fits
    assert report["ramp"]["stopped_at"] == fits + 1
    assert "p99" in report["ramp"]["reason"]
    stages = report["stages"]
    assert [s["robots"] for s in stages] == list(range(1, fits + 2))  # nothing after the failing stage
    assert all(s["held"] for s in stages[:-1]) and not stages[-1]["held"]
    # Saturated, the server answers at its capacity and no faster, however many robots ask.
    assert stages[-1]["plans_per_s"] <= 1 / service_s + 0.2
    assert stages[-2]["plans_per_s"] >= 0.9 * fits * per_robot

    written = json.loads((tmp_path / "loadtest.json").read_text())
    for key in (
        "latency_ms",
        "latency_ms_uncorrected",
        "deadline_miss_rate",
        "errors_by_status",
        "plans_per_s",
        "server_stage_ms",
        "stages",
        "ramp",
        "memory",
        "config",
    ):
        assert key in written, key
    assert set(written["latency_ms"]) >= {"p50", "p90", "p99", "p99.9", "max"}
    assert set(written["server_stage_ms"]) == {"queue", "plan"}
    assert written["ramp"] == report["ramp"]
    assert "token" not in written["config"]
    assert (tmp_path / "percentiles.png").stat().st_size > 0 and (tmp_path / "timeline.png").stat().st_size > 0
