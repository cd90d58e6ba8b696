"""--realtime: closed-loop episodes through the robot client's loop against a live server (a stand-in planner)."""

import pytest

from tests.serving.conftest import LiveServer
from tests.serving.doubles import StubPlanner
from vidplan_server.cli import main
from vidplan_server.data.video import decode_video
from vidplan_server.evaluation.closed_loop.realtime import RealtimeConfig, realtime_name, run_realtime
from vidplan_server.evaluation.closed_loop.runner import ClosedLoopConfig, ClosedLoopError
from vidplan_server.serving.config import ServiceConfig
from vidplan_server.serving.service import PlanService


@pytest.fixture
def stub_server():
    service = PlanService(StubPlanner(plan_s=0.05), ServiceConfig())
    service.warmup()
    server = LiveServer(service).wait_started()
    yield server
    server.close()
    service.close()


def test_realtime_episodes_run_through_the_server_and_resume(tmp_path, stub_server):
    config = ClosedLoopConfig(max_steps=12, videos=1, video_scale=1)
    rt = RealtimeConfig(server=stub_server.grpc_target, slowdown=2.0)
    (rec,) = run_realtime(tmp_path, ["val"], {"vidplan": 1}, config, rt, progress=False)
    assert rec["agent"] == realtime_name("vidplan", 2.0) == "vidplan@realtime-x2"
    assert rec["steps"] == 12 and rec["plans"] >= 1 and rec["realtime"]["plans_used"] >= 1
    assert rec["plan_kinds"] == {"stub": rec["realtime"]["plans_used"] + rec["realtime"]["plans_dropped"]}
    assert rec["mean_plan_ms"] >= 50 * 0.9 and rec["realtime"]["holds"] < 12
    assert rec["failure_cause"] == "no_grasp" and rec["success"] is False  # the stand-in holds the pose
    frames = decode_video(tmp_path / rec["video"])
    assert frames.shape[0] == 12 and frames.shape[2] == 3 * 64  # no heatmaps from the stand-in: views only
    # resumed: the episode on disk is read, no new request reaches the server
    before = len(stub_server.service.planner.requests)
    assert run_realtime(tmp_path, ["val"], {"vidplan": 1}, config, rt, progress=False) == [rec]
    assert len(stub_server.service.planner.requests) == before


def test_realtime_refuses_what_it_cannot_run(tmp_path, capsys):
    with pytest.raises(ClosedLoopError, match="--realtime runs vidplan .* not policy"):
        run_realtime(tmp_path, ["val"], {"policy": 1}, progress=False)
    with pytest.raises(ClosedLoopError, match="--ckpt configures the server started here"):
        run_realtime(
            tmp_path, ["val"], {"vidplan": 1}, ClosedLoopConfig(ckpt="x"), RealtimeConfig(server="h:1"), progress=False
        )
    with pytest.raises(ClosedLoopError, match="--slowdown"):
        RealtimeConfig(slowdown=0)
    argv = ["eval", "closed-loop", "--split", "val", "--episodes", "1", "--out", str(tmp_path / "cli")]
    assert main(argv + ["--agent", "policy", "--realtime"]) == 2
    assert main(argv + ["--agent", "vidplan", "--realtime", "--workers", "2"]) == 2
    assert main(argv + ["--agent", "expert", "--server", "h:1"]) == 2
    err = capsys.readouterr().err
    assert "--realtime runs vidplan" in err and "--workers: --realtime runs one episode at a time" in err
    assert "--server is only used with --realtime" in err
