import json
import subprocess
import sys

import pytest

from vidplan_server.cli import build_parser, main


def test_help_explains_every_option(capsys):
    for argv in (
        ["--help"],
        ["sim", "record", "--help"],
        ["sim", "preview", "--help"],
        ["data", "info", "--help"],
        ["train", "--help"],
        ["eval", "calibration", "--help"],
        ["eval", "reward", "--help"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in (
        "--episodes",
        "--out",
        "--seed",
        "--split",
        "--resolution",
        "--workers",
        "--imperfect-fraction",
        "--episode",
        "--json",
        "--preset",
        "--resume",
        "--frame-stride",
        "--flow-steps",
        "--gamma",
        "--extra-data",
        "--ood",
        "--windows",
        "--clip",
    ):
        assert option in out
    # every option of every subcommand has a help text
    parser = build_parser()
    for group in parser._subparsers._group_actions[0].choices.values():
        commands = group._subparsers._group_actions[0].choices.values() if group._subparsers else [group]
        for cmd in commands:
            for action in cmd._actions:
                assert action.help, f"{cmd.prog} {action.option_strings or action.dest} lacks help"


def test_record_preview_info_resume(tmp_path, capsys):
    out = tmp_path / "ds"
    args = ["sim", "record", "--episodes", "1", "--out", str(out), "--workers", "1", "--quiet", "--seed", "4"]
    assert main(args) == 0
    assert "recorded 1 episode(s), 0 already present" in capsys.readouterr().out
    args[3] = "2"
    assert main(args) == 0  # resumes: only the missing episode is recorded
    assert "recorded 1 episode(s), 1 already present" in capsys.readouterr().out

    sheet = tmp_path / "prev" / "sheet.png"
    assert main(["sim", "preview", str(out), "--episode", "1", "--out", str(sheet)]) == 0
    assert sheet.stat().st_size > 10_000 and sheet.with_suffix(".mp4").stat().st_size > 1_000
    assert "wrote" in capsys.readouterr().out

    assert main(["sim", "preview", str(out), "--episode", "7", "--out", str(sheet)]) == 2
    assert "--episode 7:" in capsys.readouterr().err
    unwritable = tmp_path / "file.txt"
    unwritable.write_text("not a folder")
    assert main(["sim", "preview", str(out), "--out", str(unwritable / "sheet.png")]) == 2
    assert "cannot write" in capsys.readouterr().err

    assert main(["data", "info", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["episodes"] == 2 and summary["resolution"] == [64, 64]
    assert set(summary["action_stats"]) == {"x", "y", "z", "roll", "pitch", "yaw", "gripper"}
    assert main(["data", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "observation.images.exterior_1_left" in text and "success" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["sim", "record", "--episodes", "1", "--out", "X", "--resolution", "64by64"],
            "--resolution must look like HxW",
        ),
        (["sim", "record", "--episodes", "1", "--out", "X", "--resolution", "63x64"], "must be even"),
        (["sim", "preview", "NOPE", "--out", "x.png"], "NOPE: dataset folder not found"),
        (["data", "info", "NOPE"], "NOPE: dataset folder not found"),
        (["sim", "preview", "NOPE", "--out", "sheet.xyz"], "must be a .png or .jpg"),
        (["train", "value", "--data", ".", "--out", "o", "--extra-data", "NOPE"], "--extra-data NOPE: dataset folder"),
        (["train", "codec", "--data", ".", "--out", "o", "--extra-data", "."], "not used by `train codec`"),
        (["train", "world", "--data", ".", "--out", "o", "--method", "fsc"], "--method: only for `train c3`, not"),
        (
            ["train", "uq", "--data", ".", "--out", "o", "--videos", "2"],
            "--videos: only for `train squbed`, not `train uq`",
        ),
        (
            ["train", "c3", "--data", ".", "--out", "o", "--windows", "4"],
            "--windows: only for `train squbed`, not `train c3`",
        ),
        (
            ["train", "squbed", "--data", ".", "--out", "o", "--loss", "brier", "--eps", "0.2"],
            "--loss, --eps: only for `train c3`, not `train squbed`",
        ),
        (["train", "c3", "--data", ".", "--out", "o", "--eps", "0.2"], "--eps is only for `train c3 --method fsc`"),
        (["eval", "reward", "--data", "NOPE", "--out", "o"], "--data NOPE: dataset folder does not exist"),
    ],
)
def test_bad_input_exits_2_with_message(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_argparse_rejects_bad_numbers(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["sim", "record", "--episodes", "0", "--out", "x"])
    assert exc.value.code == 2
    assert "--episodes: expected a positive integer" in capsys.readouterr().err


def test_console_script_entry_point():
    proc = subprocess.run([sys.executable, "-m", "vidplan_server.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "sim" in proc.stdout


def test_data_info_reads_droid_port_layouts(tmp_path, capsys):
    from tests.data.droid_fixtures import write_droid_legacy, write_droid_v3

    for name, writer in (("v3", write_droid_v3), ("legacy", write_droid_legacy)):
        root = writer(tmp_path / name)
        assert main(["data", "info", str(root), "--json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["episodes"] == 2 and summary["frames"] == 9
        assert summary["success_rate"] == 0.5
        assert summary["cameras"]["wrist_image_left"].startswith("observation.images.wrist")


def test_building_the_parser_does_not_load_the_simulator():
    """PyBullet prints a banner to stdout on import, which would corrupt `vidplan serve --print-config > file`."""
    import subprocess
    import sys

    code = "import sys; from vidplan_server.cli import build_parser; build_parser(); print('pybullet' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
