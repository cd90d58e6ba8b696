"""`vidplan demo`: the simulated robot through the thin client against a real `vidplan serve` it starts itself."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest

from vidplan_server.cli import build_parser, main
from vidplan_server.data.video import decode_video
from vidplan_server.serving.local import free_ports
from vidplan_server.sim.realtime import ScaledClock


def test_every_demo_option_is_explained():
    parser = build_parser()
    demo = parser._subparsers._group_actions[0].choices["demo"]  # argparse keeps subparsers here
    options = [a for a in demo._actions if a.option_strings and a.dest != "help"]
    assert {
        "--server",
        "--out",
        "--seed",
        "--steps",
        "--instruction",
        "--open-loop",
        "--proposals",
        "--refine-iters",
        "--slowdown",
    } <= {s for a in options for s in a.option_strings}
    assert all(a.help and len(a.help) > 20 for a in options)
    assert "demo" in parser.format_help()


def test_an_unreachable_server_exits_2_naming_server(tmp_path, capsys):
    (port,) = free_ports(1)  # nothing listens there
    assert main(["demo", "--server", f"127.0.0.1:{port}", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"--server 127.0.0.1:{port}: not reachable" in err
    assert not (tmp_path / "out" / "report.json").exists()


def test_server_options_are_refused_with_server(tmp_path, capsys):
    assert main(["demo", "--server", "127.0.0.1:1", "--device", "cpu", "--out", str(tmp_path)]) == 2
    assert "--ckpt and --device configure the server the demo starts itself" in capsys.readouterr().err


def test_scaled_clock_runs_slowdown_times_slower_than_the_wall():
    wall = [10.0]
    clock = ScaledClock(4.0, wall=lambda: wall[0], wall_sleep=lambda s: wall.__setitem__(0, wall[0] + s))
    assert clock() == 0.0
    clock.sleep(0.5)  # half a loop second is two wall seconds
    assert wall[0] == pytest.approx(12.0) and clock() == pytest.approx(0.5)


def _accepts_connections(target: str) -> bool:
    host, port = target.rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, int(port))) == 0


def test_demo_runs_an_episode_against_a_server_it_starts_and_stops(tmp_path, capsys):
    out = tmp_path / "demo"
    # Small planner, 24 control steps; --slowdown 2 and the whole chunk as horizon so that a 2-core CPU server shared
    # with other tests still answers in time for its chunks to be used.
    code = main(
        [
            "demo",
            "--out",
            str(out),
            "--seed",
            "3",
            "--steps",
            "24",
            "--proposals",
            "6",
            "--refine-iters",
            "0",
            "--open-loop",
            "15",
            "--slowdown",
            "2",
            "--view-scale",
            "2",
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    report = json.loads((out / "report.json").read_text())
    assert printed == report

    assert isinstance(report["success"], bool)
    assert report["steps"] == 24 and report["chunk_steps"] + report["holds"] == 24
    assert report["plans_received"] > 0 and report["plans_sent"] >= report["plans_received"]
    assert report["median_plan_latency_ms"] > 0
    assert report["instruction"] == report["task_instruction"] and report["instruction"].startswith(("put", "pick"))
    assert report["sim_time_s"] == pytest.approx(24 / 15)

    # The video: one frame per control step; a header line, the three 64x64 views and three heatmaps, 2x enlarged.
    frames = decode_video(out / "demo.mp4", num_frames=24)
    assert frames.shape == (24, 24 + 2 * 128, 3 * 128, 3)
    assert report["video_size"] == [384, 280]
    heatmap_rows = frames[:, 24 + 128 :].reshape(24, -1).mean(axis=1)
    assert heatmap_rows[0] < 5  # no plan yet: black
    assert 0 <= report["plans_with_heatmaps"] <= report["plans_used"]
    if report["plans_with_heatmaps"]:  # a loaded server past its deadline skips them (anytime planning)
        assert heatmap_rows.max() > 20  # the executed plan's heatmaps
    assert not np.array_equal(frames[0, 24:152], frames[-1, 24:152]) or report["chunk_steps"] == 0

    # The server the demo started is gone: stopped by SIGTERM (exit 0), reaped, its port closed.
    assert report["server_started_here"] is True and report["server_exit_code"] == 0
    with pytest.raises(ProcessLookupError):
        os.kill(report["server_pid"], 0)
    assert not _accepts_connections(report["server"])
    assert "ready" in (out / "server.log").read_text()
    # ... and it recorded its dashboard events for `vidplan dashboard --replay OUT`.
    from vidplan_server.serving.dashboard.planlog import find_log, read_events

    events = list(read_events(find_log(out)))
    assert events[0]["type"] == "hello"
    assert sum(e["type"] == "plan" for e in events) >= report["plans_received"]  # + any answered after the end
