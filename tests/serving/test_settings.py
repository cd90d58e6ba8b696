"""`vidplan serve`'s settings: flags > VIDPLAN_* variables > config file > defaults, --print-config, --version."""

from __future__ import annotations

import tomllib

import pytest

from vidplan_server.cli import build_parser, main
from vidplan_server.serving import cli_serve
from vidplan_server.serving.config import ServerConfig, ServiceConfig
from vidplan_server.serving.settings import ServeSettings, flag, load_settings, variable


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """No VIDPLAN_* variable of the machine running the tests leaks into them."""
    import os

    for name in list(os.environ):
        if name.startswith("VIDPLAN_"):
            monkeypatch.delenv(name)


def _serve_args(*argv: str):
    return build_parser().parse_args(["serve", *argv])


def _serve_parser():
    parser = build_parser()
    return parser._subparsers._group_actions[0].choices["serve"]  # argparse keeps subparsers here


def test_every_option_has_a_setting_a_variable_and_a_config_key():
    options = {s for a in _serve_parser()._actions for s in a.option_strings if s.startswith("--")}
    options -= {"--help", "--config", "--print-config"}
    options = {o for o in options if not o.startswith("--no-")}
    assert options == {flag(name) for name in ServeSettings.model_fields}
    assert variable("max_queue") == "VIDPLAN_MAX_QUEUE"


def test_defaults_are_the_configs_defaults():
    server, service = cli_serve.configs_from_args(_serve_args())
    assert server == ServerConfig() and service == ServiceConfig()
    assert service.batch_window_s == 0.0  # no cross-robot batching on CPU, where it shares no compute


def test_cross_robot_batching_is_on_by_default_for_a_cuda_planner_only():
    _, service = cli_serve.configs_from_args(_serve_args("--device", "cuda"))
    assert service.batch_window_s == 0.005
    _, service = cli_serve.configs_from_args(_serve_args("--device", "cuda", "--batch-window-ms", "0"))
    assert service.batch_window_s == 0.0
    _, service = cli_serve.configs_from_args(_serve_args("--batch-window-ms", "2"))
    assert service.batch_window_s == 0.002


def test_flags_beat_variables_beat_the_file_beat_defaults(tmp_path, monkeypatch):
    config = tmp_path / "serve.toml"
    config.write_text(
        'max_queue = 2\nsession_ttl = 5.0\nhost = "0.0.0.0"\nmax_image_size = "640x480"\nlog_format = "json"\n'
    )
    monkeypatch.setenv("VIDPLAN_MAX_QUEUE", "3")
    monkeypatch.setenv("VIDPLAN_SESSION_TTL", "7")
    monkeypatch.setenv("VIDPLAN_TOKEN", "from-env")
    server, service = cli_serve.configs_from_args(_serve_args("--config", str(config), "--max-queue", "9"))
    assert service.max_queue == 9  # flag
    assert service.session_ttl_s == 7.0 and server.token == "from-env"  # variables
    assert server.host == "0.0.0.0" and service.max_image_size == (480, 640)  # file
    assert server.log_format == "json"
    assert server.grpc_port == 50051 and service.max_sessions == 256  # defaults
    monkeypatch.setenv("VIDPLAN_CONFIG", str(config))  # the file named by its variable
    _, service = cli_serve.configs_from_args(_serve_args())
    assert service.max_queue == 3
    monkeypatch.delenv("VIDPLAN_MAX_QUEUE")
    _, service = cli_serve.configs_from_args(_serve_args())
    assert service.max_queue == 2


def test_a_serve_table_is_read_too(tmp_path):
    config = tmp_path / "serve.toml"
    config.write_text("[serve]\nmax_queue = 6\naccess_log = true\n")
    settings = load_settings({}, config)
    assert settings.max_queue == 6 and settings.access_log


@pytest.mark.parametrize(
    ("variable_name", "value", "named"),
    [
        ("VIDPLAN_MAX_QUEUE", "0", "--max-queue / VIDPLAN_MAX_QUEUE / config key max_queue"),
        ("VIDPLAN_GRPC_PORT", "70000", "--grpc-port / VIDPLAN_GRPC_PORT"),
        ("VIDPLAN_MAX_IMAGE_SIZE", "big", "VIDPLAN_MAX_IMAGE_SIZE"),
        ("VIDPLAN_LOG_FORMAT", "xml", "VIDPLAN_LOG_FORMAT"),
        ("VIDPLAN_PUBLIC_METRICS", "maybe", "VIDPLAN_PUBLIC_METRICS"),
    ],
)
def test_a_bad_variable_exits_2_naming_it(monkeypatch, capsys, variable_name, value, named):
    monkeypatch.setenv(variable_name, value)
    assert main(["serve", "--print-config"]) == 2
    assert named in capsys.readouterr().err


def test_bad_config_files_are_named(tmp_path, capsys):
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("max_queeu = 3\n")
    assert main(["serve", "--config", str(unknown), "--print-config"]) == 2
    assert "unknown setting(s) max_queeu" in capsys.readouterr().err
    broken = tmp_path / "broken.toml"
    broken.write_text("max_queue = \n")
    assert main(["serve", "--config", str(broken), "--print-config"]) == 2
    assert "not a readable TOML file" in capsys.readouterr().err
    assert main(["serve", "--config", str(tmp_path / "missing.toml"), "--print-config"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_print_config_redacts_the_token_and_reads_back(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VIDPLAN_TOKEN", "s3cret-token")
    monkeypatch.setenv("VIDPLAN_MAX_QUEUE", "8")
    assert main(["serve", "--print-config", "--host", "0.0.0.0", "--max-image-size", "320x180"]) == 0
    out = capsys.readouterr().out
    assert "s3cret-token" not in out and "<redacted>" in out
    assert "from --host" in out and "from VIDPLAN_MAX_QUEUE" in out and "from VIDPLAN_TOKEN" in out
    parsed = tomllib.loads(out)
    assert "token" not in parsed  # commented out: the printed file never sets a bogus token
    monkeypatch.delenv("VIDPLAN_TOKEN")
    monkeypatch.delenv("VIDPLAN_MAX_QUEUE")
    (tmp_path / "printed.toml").write_text(out)
    again = load_settings({}, tmp_path / "printed.toml")
    assert again.host == "0.0.0.0" and again.max_queue == 8 and again.max_image_size == (180, 320)


def test_a_bad_token_value_is_never_echoed(monkeypatch, capsys, tmp_path):
    config = tmp_path / "serve.toml"
    config.write_text("token = 12345\n")  # not a string
    assert main(["serve", "--config", str(config), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "12345" not in err and "token" in err


def test_versions(capsys):
    from vidplan_server import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"vidplan-server {__version__}"
    assert __version__ not in ("", "unknown")


def test_uq_method_from_the_flag_the_variable_and_the_file(tmp_path, monkeypatch, capsys):
    from vidplan_server.planning.planner import PlannerConfig
    from vidplan_server.planning.types import UQ_METHODS

    assert cli_serve.UQ_METHOD_CHOICES == UQ_METHODS  # --help's choices without importing the planner
    assert cli_serve.planner_config_from_args(_serve_args()).uq_method == PlannerConfig().uq_method == "bins"
    monkeypatch.setenv("VIDPLAN_UQ_METHOD", "C3-CS")  # read case-insensitively, like the log settings
    assert cli_serve.planner_config_from_args(_serve_args()).uq_method == "c3-cs"
    assert cli_serve.planner_config_from_args(_serve_args("--uq-method", "squbed")).uq_method == "squbed"
    assert main(["serve", "--print-config"]) == 0
    assert 'uq_method = "c3-cs"  # from VIDPLAN_UQ_METHOD' in capsys.readouterr().out
    monkeypatch.setenv("VIDPLAN_UQ_METHOD", "dropout")
    assert main(["serve", "--print-config"]) == 2
    assert "--uq-method / VIDPLAN_UQ_METHOD / config key uq_method" in capsys.readouterr().err
    monkeypatch.delenv("VIDPLAN_UQ_METHOD")
    config = tmp_path / "serve.toml"
    config.write_text('uq_method = "c3-fsc"\n')
    assert load_settings({}, config).uq_method == "c3-fsc"


def test_a_uq_method_the_bundle_lacks_is_refused_before_the_model_loads(tmp_path, monkeypatch, capsys):
    import json

    from vidplan_server.models.checkpoint import DEFAULT_CHECKPOINT
    from vidplan_server.planning.planner import Planner

    manifest = json.loads((DEFAULT_CHECKPOINT / "config.json").read_text())
    manifest["modules"] = {k: v for k, v in manifest["modules"].items() if k not in ("c3_fsc", "c3_cs", "squbed")}
    (tmp_path / "config.json").write_text(json.dumps(manifest))  # the check reads the manifest only

    def load(*args, **kwargs):
        raise AssertionError("the model loaded before --uq-method was checked")

    monkeypatch.setattr(Planner, "load", load)
    assert main(["serve", "--ckpt", str(tmp_path), "--uq-method", "c3-cs", "--grpc-port", "0", "--http-port", "0"]) == 2
    err = capsys.readouterr().err
    assert "--uq-method / VIDPLAN_UQ_METHOD c3-cs: the checkpoint" in err
    assert "`vidplan train c3 --method cs`" in err and "it offers bins" in err
