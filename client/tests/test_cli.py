"""`vidplan-client` against the canned in-process server."""

from __future__ import annotations

import json

import cv2
import pytest
from fakes import FakeEnv
from vidplan_client.cli import main
from vidplan_client.wire import vidplan_pb2 as pb

STATE = {
    "joint_positions": [0, -0.5, 0, -2, 0, 1.5, 0.8],
    "cartesian_position": [0.5, 0, 0.3, 3.1, 0, 0],
    "gripper_position": 0.0,
}


@pytest.fixture
def frames(tmp_path):
    paths = []
    for name, rgb in FakeEnv().images.items():
        paths.append(tmp_path / f"{name}.png")
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return [str(p) for p in paths]


def run(config, *args):
    return main(["--target", config.target, "--token", "t0k", "--timeout", "5", *args])


def test_plan_prints_the_chunk(config, servicer, frames, capsys):
    code = run(
        config,
        "plan",
        "--frames",
        *frames,
        "--state-json",
        json.dumps(STATE),
        "--instruction",
        "pick it up",
        "--refine-iters",
        "0",
        "--seed",
        "3",
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "confidence 0.750" in out and len([line for line in out.splitlines() if line.startswith(" 14 ")]) == 1
    sent = servicer.calls[0]
    assert sent.instruction == "pick it up" and sent.options.refine_iters == 0 and sent.options.seed == 3
    assert not sent.options.HasField("num_proposals") and not sent.options.return_heatmaps
    assert [(f.camera, f.width, f.height) for f in sent.observation.frames] == [
        ("exterior_image_1_left", 32, 24),
        ("exterior_image_2_left", 32, 24),
        ("wrist_image_left", 32, 24),
    ]
    assert servicer.metadata[0]["authorization"] == "Bearer t0k"


def test_plan_asks_for_the_policy_baseline(config, servicer, frames, capsys):
    code = run(
        config,
        "plan",
        "--frames",
        *frames,
        "--state-json",
        json.dumps(STATE),
        "--instruction",
        "pick it up",
        "--mode",
        "policy",
        "--policy-samples",
        "4",
        "--policy-perturbations",
        "2",
    )
    assert code == 0, capsys.readouterr().err
    sent = servicer.calls[0].options
    assert sent.mode == pb.PLAN_MODE_POLICY and (sent.policy_samples, sent.policy_perturbations) == (4, 2)
    assert run(config, "plan", "--frames", *frames, "--state-json", json.dumps(STATE), "--instruction", "go") == 0
    default = servicer.calls[1].options
    assert default.mode == pb.PLAN_MODE_PLAN and not default.HasField("policy_samples")
    assert default.uq_method == pb.UQ_METHOD_UNSPECIFIED  # the server's --uq-method
    argv = ["--frames", *frames, "--state-json", json.dumps(STATE), "--instruction", "go", "--uq-method", "c3-fsc"]
    assert run(config, "plan", *argv) == 0
    assert servicer.calls[2].options.uq_method == pb.UQ_METHOD_C3_FSC
    with pytest.raises(SystemExit):
        run(
            config,
            "plan",
            "--frames",
            *frames,
            "--state-json",
            json.dumps(STATE),
            "--instruction",
            "go",
            "--mode",
            "dream",
        )
    assert "invalid choice: 'dream'" in capsys.readouterr().err
    assert (
        run(
            config,
            "plan",
            "--frames",
            *frames,
            "--state-json",
            json.dumps(STATE),
            "--instruction",
            "go",
            "--policy-samples",
            "-1",
        )
        == 2
    )
    assert "policy_samples must be >= 0" in capsys.readouterr().err


def test_plan_reads_state_from_a_file_and_prints_json(config, servicer, frames, tmp_path, capsys):
    state = tmp_path / "state.json"
    state.write_text(json.dumps(STATE))
    assert run(config, "plan", "--frames", *frames, "--state-json", str(state), "--instruction", "go", "--json") == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["sequence"] == "1" and len(printed["chunk"]) == 15  # JSON writes uint64 as a string


def test_info_and_health(config, servicer, capsys):
    assert run(config, "info") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["horizon"] == 5 and info["cameras"][2] == "wrist_image_left"
    assert run(config, "health") == 0 and capsys.readouterr().out.strip() == "SERVING"
    assert run(config, "health", "--service", "vidplan.v1.VidPlan") == 1


@pytest.mark.parametrize(
    "state, match",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"cartesian_position": [0] * 6}), "needs joint_position"),
        (json.dumps({**STATE, "cartesian_position": [0, 0]}), "cartesian_position"),
        ("/no/such/state.json", "neither JSON text nor an existing file"),
    ],
)
def test_bad_state_is_a_clear_error(config, frames, capsys, state, match):
    assert run(config, "plan", "--frames", *frames, "--state-json", state, "--instruction", "go") == 2
    err = capsys.readouterr().err
    assert err.startswith("vidplan-client: error:") and match in err


def test_missing_frame_file_is_named(config, frames, capsys):
    frames[1] = "/no/such/frame.png"
    assert run(config, "plan", "--frames", *frames, "--state-json", json.dumps(STATE), "--instruction", "go") == 2
    assert "/no/such/frame.png does not exist" in capsys.readouterr().err


def test_server_errors_name_the_status(config, servicer, frames, capsys):
    import grpc

    servicer.fail_with = [grpc.StatusCode.INVALID_ARGUMENT]
    assert run(config, "plan", "--frames", *frames, "--state-json", json.dumps(STATE), "--instruction", "go") == 2
    assert "INVALID_ARGUMENT: canned INVALID_ARGUMENT" in capsys.readouterr().err


def test_unreachable_server(capsys):
    assert main(["--target", "127.0.0.1:1", "--timeout", "2", "--retries", "0", "health"]) == 2
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_heatmaps_are_written(config, servicer, frames, tmp_path):
    out = tmp_path / "maps"
    assert (
        run(
            config,
            "plan",
            "--frames",
            *frames,
            "--state-json",
            json.dumps(STATE),
            "--instruction",
            "go",
            "--heatmaps-out",
            str(out),
        )
        == 0
    )
    assert servicer.calls[0].options.return_heatmaps
    written = cv2.imread(str(out / "heatmap_f2_wrist_image_left.png"))
    assert written.shape == (2, 4, 3) and (written == 200).all()


def test_version(capsys):
    from vidplan_client import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"vidplan-client {__version__}"
    assert __version__ not in ("", "unknown")
