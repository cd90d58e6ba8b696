"""`vidplan serve` as a process: start-up on the bundled checkpoint, then SIGTERM with a plan in flight."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from vidplan_client.wire import vidplan_pb2_grpc as pb_grpc

from tests.serving.doubles import pb_request
from vidplan_server.cli import build_parser


def test_every_serve_option_is_explained():
    parser = build_parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]  # argparse keeps subparsers here
    options = [a for a in serve._actions if a.option_strings and a.dest != "help"]
    assert {
        "--ckpt",
        "--grpc-port",
        "--http-port",
        "--host",
        "--device",
        "--max-queue",
        "--token",
        "--tls-cert",
        "--tls-key",
        "--public-metrics",
        "--max-image-size",
        "--max-session-mb",
        "--policy-samples",
        "--policy-perturbations",
        "--keep-margin",
        "--keep-draws",
        "--progress-weight",
        "--policy-pulls",
        "--goal-samples",
    } <= {s for a in options for s in a.option_strings}
    assert all(a.help and len(a.help) > 20 for a in options)


def test_hostile_client_settings_reach_the_configs(capsys):
    from vidplan_server.serving.cli_serve import configs_from_args

    parser = build_parser()
    server, service = configs_from_args(parser.parse_args(["serve"]))
    assert server.public_metrics is None and server.metrics_public
    assert service.max_image_size == (720, 1280) and service.max_session_bytes == 256 * 2**20
    args = parser.parse_args(
        ["serve", "--host", "0.0.0.0", "--token", "t", "--max-image-size", "320x180", "--max-session-mb", "64"]
    )
    server, service = configs_from_args(args)
    assert not server.metrics_public  # on the network with a token: metrics, docs and reflection need it too
    assert service.max_image_size == (180, 320) and service.max_session_bytes == 64 * 2**20
    server, _ = configs_from_args(parser.parse_args(["serve", "--host", "0.0.0.0", "--token", "t", "--public-metrics"]))
    assert server.metrics_public
    server, _ = configs_from_args(parser.parse_args(["serve", "--token", "t", "--no-public-metrics"]))
    assert not server.metrics_public
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["serve", "--max-image-size", "big"])
    assert info.value.code == 2 and "--max-image-size: expected WIDTHxHEIGHT" in capsys.readouterr().err


def test_the_proposal_mix_reaches_the_planner_config(capsys):
    from vidplan_server.planning.planner import PlannerConfig
    from vidplan_server.serving import cli_serve

    parser = build_parser()
    defaults = PlannerConfig()
    assert cli_serve.planner_config_from_args(parser.parse_args(["serve"])) == defaults
    # --help states the planner's own defaults and range without importing torch.
    assert (
        cli_serve.DEFAULT_POLICY_SAMPLES,
        cli_serve.DEFAULT_POLICY_PERTURBATIONS,
        cli_serve.MAX_PROPOSALS,
        cli_serve.DEFAULT_KEEP_MARGIN,
        cli_serve.DEFAULT_KEEP_DRAWS,
        cli_serve.DEFAULT_PROGRESS_WEIGHT,
        cli_serve.DEFAULT_POLICY_PULLS,
        cli_serve.DEFAULT_GOAL_SAMPLES,
        cli_serve.DEFAULT_POLICY_TEMPERATURE,
        cli_serve.DEFAULT_COHERENCE_SAMPLES,
    ) == (
        defaults.policy_samples,
        defaults.policy_perturbations,
        defaults.max_proposals,
        defaults.keep_margin,
        defaults.keep_draws,
        defaults.score.progress_weight,
        defaults.policy_pulls,
        defaults.goal_samples,
        defaults.policy_temperature,
        defaults.coherence_samples,
    )
    config = cli_serve.planner_config_from_args(
        parser.parse_args(["serve", "--policy-samples", "0", "--policy-perturbations", "4"])
    )
    assert (config.policy_samples, config.policy_perturbations) == (0, 4)
    assert config.num_proposals == defaults.num_proposals
    assert cli_serve.planner_config_from_args(parser.parse_args(["serve", "--keep-margin", "0"])).keep_margin == 0.0
    assert cli_serve.planner_config_from_args(parser.parse_args(["serve", "--keep-draws", "3"])).keep_draws == 3
    assert cli_serve.planner_config_from_args(parser.parse_args(["serve", "--policy-pulls", "4"])).policy_pulls == 4
    assert cli_serve.planner_config_from_args(parser.parse_args(["serve", "--goal-samples", "5"])).goal_samples == 5
    assert (
        cli_serve.planner_config_from_args(parser.parse_args(["serve", "--coherence-samples", "1"])).coherence_samples
        == 1
    )
    warm = cli_serve.planner_config_from_args(parser.parse_args(["serve", "--policy-temperature", "1"]))
    assert warm.policy_temperature == 1.0
    with pytest.raises(ValueError, match="policy_temperature"):
        cli_serve.planner_config_from_args(parser.parse_args(["serve", "--policy-temperature", "5"]))
    assert defaults.progress_when_closed
    held = cli_serve.planner_config_from_args(parser.parse_args(["serve", "--no-progress-when-closed"]))
    assert held.progress_when_closed is False
    assert not defaults.goal_first
    assert cli_serve.planner_config_from_args(parser.parse_args(["serve", "--goal-first"])).goal_first is True
    assert defaults.mix_radius == 0.0
    assert cli_serve.planner_config_from_args(parser.parse_args(["serve", "--mix-radius", "0.08"])).mix_radius == 0.08
    with pytest.raises(ValueError, match=r"^--mix-radius / VIDPLAN_MIX_RADIUS .*greater than or equal to 0"):
        cli_serve.planner_config_from_args(parser.parse_args(["serve", "--mix-radius", "-1"]))
    assert defaults.mix_known_words is False
    assert cli_serve.planner_config_from_args(parser.parse_args(["serve", "--mix-known-words"])).mix_known_words
    weighted = cli_serve.planner_config_from_args(parser.parse_args(["serve", "--progress-weight", "0"]))
    assert weighted.score.progress_weight == 0.0 and weighted.score.beta == defaults.score.beta
    with pytest.raises(ValueError, match=r"^--policy-samples: must be in \[0, 64\], got 65$"):
        cli_serve.planner_config_from_args(parser.parse_args(["serve", "--policy-samples", "65"]))
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["serve", "--policy-perturbations", "-1"])
    assert info.value.code == 2 and "--policy-perturbations: expected an integer >= 0" in capsys.readouterr().err


def test_bad_options_exit_2_with_the_option_named(capsys):
    from vidplan_server.cli import main

    assert main(["serve", "--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"]) == 2
    assert "--tls-cert /nonexistent.pem: no such file" in capsys.readouterr().err
    assert main(["serve", "--policy-samples", "65"]) == 2
    assert "--policy-samples: must be in [0, 64], got 65" in capsys.readouterr().err


class _Logs:
    """Collects a process's stderr lines on a thread."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc) -> None:
        for line in proc.stderr:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in list(self.lines):
                match = re.search(pattern, line)
                if match:
                    return match
            time.sleep(0.05)
        raise AssertionError(f"no log line matched {pattern!r}:\n" + "".join(self.lines))


def test_sigterm_finishes_the_request_in_flight(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vidplan_server.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--grpc-port",
            "0",
            "--http-port",
            "0",
            "--log-level",
            "info",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    logs = _Logs(proc)
    try:
        ports = logs.wait_for(r"listening: gRPC (\d+), HTTP (\d+)", timeout=120)
        target, http_url = f"127.0.0.1:{ports[1]}", f"http://127.0.0.1:{ports[2]}"
        logs.wait_for(r"ready: warmed up", timeout=60)
        with grpc.insecure_channel(target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
            assert httpx.get(f"{http_url}/readyz", timeout=5).status_code == 200
            vidplan = pb_grpc.VidPlanStub(channel)
            # A deliberately heavy plan (default proposals, refinement) so that it is surely in flight at SIGTERM.
            in_flight = vidplan.Plan.future(pb_request(sequence=1, num_proposals=24, refine_iters=4), timeout=120)
            end = time.monotonic() + 30
            while "vidplan_in_flight 1.0" not in httpx.get(f"{http_url}/metrics", timeout=5).text:
                assert time.monotonic() < end, "the plan never became in flight"
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            logs.wait_for(r"shutting down: refusing new requests, 1 in flight", timeout=10)
            assert (
                health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                == health_pb2.HealthCheckResponse.NOT_SERVING
            )
            try:
                vidplan.Plan(pb_request(sequence=2), timeout=10)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
            else:
                raise AssertionError("a new request was accepted during shutdown")
            reply = in_flight.result(120)
            assert reply.sequence == 1 and len(reply.chunk) == 15
        assert proc.wait(60) == 0
        assert any("stopped" in line for line in logs.lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
