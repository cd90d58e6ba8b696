"""``vidplan dashboard --replay`` and the plan log of ``vidplan serve --dashboard-record`` (stub planner)."""

from __future__ import annotations

import httpx

from tests.serving.conftest import LiveServer
from tests.serving.doubles import StubPlanner, json_request
from vidplan_server.cli import main
from vidplan_server.serving.dashboard.planlog import read_events


def test_a_recording_server_writes_a_plan_log_the_replay_server_serves(tmp_path):
    from vidplan_server.apps.dashboard.command import ReplayServer
    from vidplan_server.serving.service import PlanService

    log = tmp_path / "run" / "planlog.jsonl"
    server = LiveServer(PlanService(StubPlanner()), dashboard_record=log).wait_started()
    for i in (1, 2):
        assert (
            httpx.post(
                f"{server.http_url}/v1/plan", json=json_request(i, float(i), session="r1"), timeout=30
            ).status_code
            == 200
        )
    server.close()  # the shutdown flushes the log
    events = list(read_events(log))
    assert events[0]["type"] == "hello"
    assert [e["sequence"] for e in events if e["type"] == "plan"] == [1, 2]

    replay = ReplayServer(log).start()
    try:
        with httpx.Client(base_url=replay.url, timeout=10) as http:
            assert http.get("/dashboard/api/config").json() == {"mode": "replay", "auth": False}
            assert http.get("/dashboard/api/replay").text == log.read_text()
            assert http.get("/dashboard").status_code == 200
            assert http.get("/dashboard/api/events").status_code == 404  # nothing live here
    finally:
        replay.stop()


def test_replay_without_a_plan_log_is_a_usage_error(tmp_path, capsys):
    assert main(["dashboard", "--replay", str(tmp_path)]) == 2
    assert "no plan log" in capsys.readouterr().err
