"""``vidplan loadtest`` end to end: the real transports and server, a stand-in planner, a recorded tiny dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.serving.conftest import LiveServer
from tests.serving.doubles import StubPlanner
from vidplan_server.apps.loadtest.http_wire import request_json
from vidplan_server.cli import main
from vidplan_server.data.reader import EpisodeDataset
from vidplan_server.planning.types import UnsafePlanError
from vidplan_server.serving.config import ServiceConfig
from vidplan_server.serving.http_models import PlanRequest as HttpPlanRequest
from vidplan_server.serving.service import PlanService


class RefusingEveryOtherPlan(StubPlanner):
    """Answers every second request with "no safe plan" (FAILED_PRECONDITION / 422)."""

    def plan(self, request):
        if len(self.requests) % 2:
            self.requests.append(request)
            raise UnsafePlanError(["step 0: outside the workspace (stub)"])
        return super().plan(request)


@pytest.fixture
def live_stub():
    made = []

    def make(planner, **config):
        server = LiveServer(PlanService(planner, ServiceConfig(max_queue=8)), **config).wait_started()
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


def _loadtest(tmp_path, target, data, *extra) -> dict:
    out = tmp_path / "out"
    code = main(
        [
            "loadtest",
            "--target",
            target,
            "--data",
            str(data),
            "--robots",
            "2",
            "--duration",
            "2.5",
            "--warmup",
            "0.5",
            "--deadline-ms",
            "2000",
            "--out",
            str(out),
            "--quiet",
            *extra,
        ]
    )
    assert code == 0
    return json.loads((out / "loadtest.json").read_text())


def test_grpc_robots_replay_the_recorded_episodes_and_the_report_has_every_figure(tmp_path, tiny_dataset, live_stub):
    stub = StubPlanner(stages_ms={"encode": 1.0, "rollout": 2.0})
    server = live_stub(stub)
    report = _loadtest(
        tmp_path,
        server.grpc_target,
        tiny_dataset,
        "--metrics-port",
        str(server.server.http_port),
        "--memory-every",
        "0.5",
    )
    assert report["plans"] > 0 and report["errors_by_status"] == {}
    assert set(report["latency_ms"]) >= {"p50", "p90", "p99", "p99.9", "max"}
    assert report["latency_ms"]["p50"] <= report["latency_ms"]["p99"] <= report["latency_ms"]["max"]
    assert {"decode", "queue", "plan", "total", "planner_rollout"} <= set(report["server_stage_ms"])
    assert report["deadline_miss_rate"] is not None and report["plans_per_s"] > 0
    assert report["memory"]["sampled"] >= 2  # the server exports process_resident_memory_bytes
    assert (tmp_path / "out" / "percentiles.png").is_file() and (tmp_path / "out" / "timeline.png").is_file()
    # Every state the planner got is a recorded one (two robots, one episode each).
    dataset = EpisodeDataset(tiny_dataset)
    recorded = np.concatenate([dataset.load_episode(k, images=False).cartesian_position for k in range(2)])
    for request in stub.requests:
        sent = np.asarray(request.state.cartesian_position)
        assert np.min(np.abs(recorded - sent).max(axis=1)) < 1e-5


def test_http_errors_are_counted_by_status(tmp_path, tiny_dataset, live_stub):
    server = live_stub(RefusingEveryOtherPlan())
    report = _loadtest(tmp_path, server.http_url.split("://")[1], tiny_dataset, "--transport", "http")
    refused = report["errors_by_status"].get("422 FAILED_PRECONDITION", 0)
    assert refused > 0 and set(report["errors_by_status"]) == {"422 FAILED_PRECONDITION"}
    assert report["plans"] + refused == report["requests"]
    assert report["memory"]["sampled"] >= 1  # over HTTP the target port serves /metrics too


def test_an_unreachable_target_is_a_usage_error_naming_it(tmp_path, tiny_dataset, capsys):
    from vidplan_server.serving.local import free_ports

    (port,) = free_ports(1)
    code = main(
        [
            "loadtest",
            "--target",
            f"127.0.0.1:{port}",
            "--data",
            str(tiny_dataset),
            "--quiet",
            "--duration",
            "1",
            "--warmup",
            "0",
        ]
    )
    assert code == 2
    assert f"--target 127.0.0.1:{port}" in capsys.readouterr().err


def test_the_http_body_is_what_the_server_reads():
    from vidplan_client.convert import make_request, plan_options

    from tests.apps.loadtest_fakes import synthetic_episode

    episode = synthetic_episode(4)
    request = make_request(
        "s",
        3,
        episode.instruction,
        episode.observations[3],
        history=[episode.observations[0]],
        options=plan_options(deadline_ms=500, num_proposals=6, seed=7),
    )
    body = HttpPlanRequest.model_validate(request_json(request))
    assert body.options.deadline_ms == 500 and body.options.num_proposals == 6 and body.options.seed == 7
    assert body.options.refine_iters is None  # unset stays the server's default
    assert body.observation.frames[0].encoding == "jpeg" and len(body.history) == 1
    assert body.history[0].state is None and body.observation.state.gripper_position == pytest.approx(0.75)
