"""The settings of ``vidplan serve``: one typed object, from flags, ``VIDPLAN_*`` variables and a config file.

Precedence, highest first: a flag given on the command line, then the environment variable of the same name
(``--max-queue`` -> ``VIDPLAN_MAX_QUEUE``), then the key of the same name in the TOML config file (``--config
FILE`` or ``VIDPLAN_CONFIG``; ``max_queue = 8``), then the default below. A container or a Kubernetes pod sets
variables (a ConfigMap for the settings, a Secret for ``VIDPLAN_TOKEN``); a GPU box may keep a file. Every
setting is checked whatever its source, and an error names the flag, the variable and the key::

    VIDPLAN_MAX_QUEUE=8 vidplan serve --config serve.toml --print-config

pydantic-settings reads the variables and the file; this module imports neither torch nor the server, so
``--help`` and ``--print-config`` stay fast. ``--print-config`` writes the effective settings as a config file
(with where each value came from), the token redacted.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

ENV_PREFIX = "VIDPLAN_"
#: The variable naming the config file (``--config`` wins over it).
CONFIG_VARIABLE = "VIDPLAN_CONFIG"
#: What ``--print-config`` shows instead of the token.
REDACTED = "<redacted>"

_FILE_VALUES: ContextVar[dict[str, Any] | None] = ContextVar("vidplan_config_file_values", default=None)


def parse_image_size(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` (either orientation) -> (shorter side, longer side); ValueError says what was expected."""
    try:
        width, height = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise ValueError(f"expected WIDTHxHEIGHT in pixels, e.g. 1280x720, got {text!r}") from None
    if min(width, height) < 1:
        raise ValueError(f"sides must be >= 1, got {text!r}")
    return min(width, height), max(width, height)


class _FileSource(PydanticBaseSettingsSource):
    """The config file's values (read by :func:`load_settings`), the lowest source but the defaults."""

    def get_field_value(self, field, field_name):  # pragma: no cover - __call__ is what pydantic-settings uses
        return (_FILE_VALUES.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_FILE_VALUES.get() or {})


class ServeSettings(BaseSettings):
    """Every option of ``vidplan serve``; the field ``max_queue`` is ``--max-queue`` and ``VIDPLAN_MAX_QUEUE``.

    Defaults are the production ones of :class:`~vidplan_server.serving.config.ServerConfig` and
    :class:`~vidplan_server.serving.config.ServiceConfig` (a test keeps them equal).
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True, validate_default=True)

    # model and planner
    ckpt: Path | None = Field(None, description="checkpoint folder (default: the bundled checkpoint)")
    device: str = Field("cpu", description="torch device of the planner: cpu, cuda, cuda:1")
    policy_samples: int | None = Field(None, ge=0, description="policy samples per plan (default: the planner's)")
    policy_perturbations: int | None = Field(None, ge=0, description="perturbed policy samples per plan")
    policy_pulls: int | None = Field(None, ge=0, description="policy samples bent toward the located object")
    goal_samples: int | None = Field(
        None, ge=0, description="of the policy samples, those from the goal policy (it reads the instruction's map)"
    )
    policy_temperature: float | None = Field(
        None, gt=0, le=4, description="standard deviation of the flow noise of policy and goal-policy samples"
    )
    coherence_samples: int | None = Field(
        None, ge=1, le=64, description="policy draws among which policy mode keeps the one continuing the reference"
    )
    keep_margin: float | None = Field(
        None, ge=0, description="score margin to replace the robot's own chunk (default: the planner's)"
    )
    keep_draws: int | None = Field(
        None, ge=0, le=16, description="redrawn noises that must confirm a switch from the robot's own chunk"
    )
    progress_weight: float | None = Field(
        None, ge=0, le=100, description="weight per metre of the locator's progress term in the score"
    )
    progress_when_closed: bool | None = Field(
        None, description="whether the progress term also counts while the gripper is closed (default: the planner's)"
    )
    goal_first: bool | None = Field(
        None, description="goal samples before the policy's: the goal policy's chunk is the one kept unless beaten"
    )
    mix_radius: float | None = Field(
        None,
        ge=0,
        le=10,
        description="policy samples mixed with goal samples only within this horizontal distance (m) of the located "
        "object; 0 everywhere (default: the planner's)",
    )
    mix_known_words: bool | None = Field(
        None,
        description="policy samples mixed with goal samples only when the policy knows every word of the instruction "
        "(default: the planner's)",
    )
    uq_method: Literal["bins", "c3-fsc", "c3-cs", "squbed"] = Field(
        "bins", description="uncertainty weighting the selection when a request leaves options.uq_method unset"
    )
    # network
    host: str = Field("127.0.0.1", min_length=1, description="address both servers bind")
    grpc_port: int = Field(50051, ge=-1, le=65535, description="gRPC port; 0 picks a free one, -1 disables gRPC")
    http_port: int = Field(8000, ge=-1, le=65535, description="HTTP port; 0 picks a free one, -1 disables HTTP")
    token: SecretStr | None = Field(None, description="bearer token both transports require")
    public_metrics: bool | None = Field(None, description="metrics, docs and reflection open without the token")
    tls_cert: Path | None = Field(None, description="PEM certificate chain (TLS with tls_key)")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    max_message_mb: float = Field(32.0, gt=0, description="largest gRPC message (MiB)")
    shutdown_grace: float = Field(30.0, gt=0, description="seconds in-flight plans may take after SIGTERM")
    # requests and sessions
    max_queue: int = Field(4, ge=1, description="requests allowed to wait for the planner")
    session_ttl: float = Field(60.0, gt=0, description="seconds a robot session lives without a request")
    max_sessions: int = Field(256, ge=0, description="sessions kept (least recently used dropped)")
    # NoDecode: the variable holds WIDTHxHEIGHT, not the JSON pydantic-settings expects of a tuple.
    max_image_size: Annotated[tuple[int, int], NoDecode] = Field(
        (720, 1280), description="largest camera image, WIDTHxHEIGHT"
    )
    max_session_mb: float = Field(256.0, gt=0, description="memory all sessions together may hold (MiB)")
    # cross-robot batching (vidplan_server/serving/batching.py)
    # Decided, measured (README "How many robots does one server hold?"): on 2 CPU cores a batch of R robots costs
    # what R plans cost one after another (no compute is shared) and the robots wait for each other, so batching is
    # off on CPU by default; on an accelerator one batched rollout costs about one plan's.
    batch_window_ms: float | None = Field(
        None,
        ge=0,
        le=1000,
        description="plan calls queued within this window in one batch (ms); 0 turns it off "
        "(default: 5 on a CUDA device, 0 on CPU)",
    )
    max_batch: int = Field(8, ge=1, le=64, description="robots planned in one batch at most")
    # logs
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    log_format: Literal["text", "json"] = Field("text", description="text for a terminal, json lines for a collector")
    access_log: bool = Field(False, description="one log line per plan request (id, session, outcome, latency)")
    # operator dashboard (vidplan_server/serving/dashboard/)
    dashboard: bool = Field(True, description="serve the operator dashboard at /dashboard on the HTTP port")
    dashboard_hz: float = Field(2.0, gt=0, le=30, description="heatmap renders per watched session and second")
    dashboard_record: Path | None = Field(None, description="plan log to append every session's events to")
    # scale-out on Ray Serve (vidplan_server/serving/ray_serve.py)
    ray: bool = Field(False, description="serve through Ray Serve replicas instead of one process")
    ray_address: str | None = Field(None, description="Ray cluster to join (default: start a local one)")
    ray_min_replicas: int = Field(1, ge=1, description="replicas always up (a robot's planner never scales to 0)")
    ray_max_replicas: int = Field(1, ge=1, description="replicas the autoscaler may add under load")
    ray_target_ongoing: float = Field(2.0, gt=0, description="ongoing requests per replica the autoscaler aims at")
    ray_gpus_per_replica: float = Field(0.0, ge=0, description="GPUs per replica (0: a CPU replica)")
    ray_cpus_per_replica: float = Field(1.0, gt=0, description="CPUs per replica")
    ray_max_queued: int = Field(8, ge=1, description="requests Serve holds for a free replica; more are refused")

    @field_validator("max_image_size", mode="before")
    @classmethod
    def _image_size(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_image_size(value)
        if isinstance(value, list | tuple) and len(value) == 2:
            return tuple(sorted(int(v) for v in value))
        return value

    @field_validator("max_image_size")
    @classmethod
    def _image_size_positive(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < 1:
            raise ValueError(f"sides must be >= 1, got {value}")
        return value

    @field_validator("token", "ckpt", "tls_cert", "tls_key", "dashboard_record", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("log_level", "log_format", "uq_method", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Flags (passed as init values), then VIDPLAN_* variables, then the config file; no .env files.
        return init_settings, env_settings, _FileSource(settings_cls)

    # ------------------------------------------------------------------ derived values
    @property
    def token_value(self) -> str | None:
        return self.token.get_secret_value() if self.token is not None else None

    @property
    def max_image_size_text(self) -> str:
        short, long = self.max_image_size
        return f"{long}x{short}"

    def check(self) -> None:
        """Checks across settings and of the files they name; ValueError names the flag."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        for flag, path in (("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key)):
            if path is not None and not path.is_file():
                raise ValueError(f"{flag} {path}: no such file")
        if self.grpc_port == -1 and self.http_port == -1:
            raise ValueError("--grpc-port -1 and --http-port -1: nothing to serve")
        if self.grpc_port > 0 and self.grpc_port == self.http_port:
            raise ValueError(f"--grpc-port and --http-port are both {self.grpc_port}")
        if self.ray and self.tls_cert is not None:
            raise ValueError("--ray serves plaintext: terminate TLS in front of Ray Serve (an ingress), not here")
        if self.ray_max_replicas < self.ray_min_replicas:
            raise ValueError(
                f"--ray-max-replicas {self.ray_max_replicas} is below --ray-min-replicas {self.ray_min_replicas}"
            )

    def configs(self):
        """Checked (:meth:`check`), the server's and the service's configs (:class:`~vidplan_server.serving.config.
        ServerConfig`, :class:`~vidplan_server.serving.config.ServiceConfig`)."""
        from vidplan_server.serving.config import ServerConfig, ServiceConfig
        from vidplan_server.serving.dashboard.config import DashboardConfig

        self.check()
        server = ServerConfig(
            host=self.host,
            grpc_port=self.grpc_port,
            http_port=self.http_port,
            token=self.token_value,
            tls_cert=self.tls_cert,
            tls_key=self.tls_key,
            max_message_bytes=int(self.max_message_mb * 2**20),
            shutdown_grace_s=self.shutdown_grace,
            log_level=self.log_level,
            log_format=self.log_format,
            public_metrics=self.public_metrics,
            dashboard=DashboardConfig(render_hz=self.dashboard_hz) if self.dashboard else None,
            dashboard_record=self.dashboard_record,
        )
        service = ServiceConfig(
            max_queue=self.max_queue,
            session_ttl_s=self.session_ttl,
            max_sessions=self.max_sessions,
            max_image_size=tuple(self.max_image_size),
            max_session_bytes=int(self.max_session_mb * 2**20),
            access_log=self.access_log,
            batch_window_s=self.effective_batch_window_ms() / 1000.0,
            max_batch=self.max_batch,
        )
        return server, service

    def effective_batch_window_ms(self) -> float:
        """``batch_window_ms``, or when unset 5 ms on a CUDA device and 0 (no batching) on CPU."""
        if self.batch_window_ms is not None:
            return self.batch_window_ms
        return 5.0 if self.device.startswith("cuda") else 0.0

    def planner_config(self):
        """The :class:`~vidplan_server.planning.planner.PlannerConfig` (imports torch); ValueError names a bad
        option."""
        from dataclasses import replace

        from vidplan_server.planning.planner import PlannerConfig

        config = PlannerConfig()
        changes = {}
        for name in ("policy_samples", "policy_perturbations", "policy_pulls", "goal_samples"):
            value = getattr(self, name)
            if value is None:
                continue
            if not 0 <= value <= config.max_proposals:
                raise ValueError(f"{flag(name)}: must be in [0, {config.max_proposals}], got {value}")
            changes[name] = value
        for name in (
            "keep_margin",
            "keep_draws",
            "policy_temperature",
            "coherence_samples",
            "progress_when_closed",
            "goal_first",
            "mix_radius",
            "mix_known_words",
        ):
            if getattr(self, name) is not None:
                changes[name] = getattr(self, name)
        if self.progress_weight is not None:
            changes["score"] = replace(config.score, progress_weight=self.progress_weight)
        return replace(config, **changes, uq_method=self.uq_method)


def flag(name: str) -> str:
    """The command-line flag of a setting: ``max_queue`` -> ``--max-queue``."""
    return "--" + name.replace("_", "-")


def variable(name: str) -> str:
    """The environment variable of a setting: ``max_queue`` -> ``VIDPLAN_MAX_QUEUE``."""
    return ENV_PREFIX + name.upper()


def config_path(given: Path | None, environ: Mapping[str, str] | None = None) -> Path | None:
    """The config file: ``--config`` when given, else ``$VIDPLAN_CONFIG``, else none."""
    if given is not None:
        return given
    text = (os.environ if environ is None else environ).get(CONFIG_VARIABLE, "").strip()
    return Path(text) if text else None


def read_config_file(path: Path) -> dict[str, Any]:
    """A TOML file's settings (flat keys named like the fields, or under a ``[serve]`` table)."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"--config {path}: not a readable TOML file ({exc})") from None
    if isinstance(data.get("serve"), dict):
        data = {**{k: v for k, v in data.items() if k != "serve"}, **data["serve"]}
    unknown = sorted(set(data) - set(ServeSettings.model_fields))
    if unknown:
        raise ValueError(
            f"--config {path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(ServeSettings.model_fields)}"
        )
    return data


def load_settings(flags: Mapping[str, Any], config_file: Path | None = None) -> ServeSettings:
    """The effective settings: ``flags`` (the options given on the command line, by field name) over the
    ``VIDPLAN_*`` variables over ``config_file`` over the defaults. ValueError names the bad setting."""
    file_values = read_config_file(config_file) if config_file is not None else {}
    token = _FILE_VALUES.set(file_values)
    try:
        return ServeSettings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        raise ValueError(_explain(exc)) from None
    except SettingsError as exc:  # a variable pydantic-settings could not even parse
        raise ValueError(f"{exc} (variables {ENV_PREFIX}*)") from None
    finally:
        _FILE_VALUES.reset(token)


def _explain(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "settings"
        where = f"{flag(name)} / {variable(name)} / config key {name}" if name in ServeSettings.model_fields else name
        shown = error.get("input")
        if name == "token":
            shown = REDACTED
        lines.append(f"{where}: {error['msg']} (got {shown!r})")
    return "; ".join(lines)


def sources(
    flags: Mapping[str, Any], config_file: Path | None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Where each setting's value came from: the flag, the variable, the file, or ``default``."""
    environ = os.environ if environ is None else environ
    file_keys = set(read_config_file(config_file)) if config_file is not None else set()
    env_keys = {k.upper() for k in environ}
    out = {}
    for name in ServeSettings.model_fields:
        if flags.get(name) is not None:
            out[name] = flag(name)
        elif variable(name) in env_keys:
            out[name] = variable(name)
        elif name in file_keys:
            out[name] = str(config_file)
        else:
            out[name] = "default"
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def render(settings: ServeSettings, origin: Mapping[str, str] | None = None) -> str:
    """The settings as a TOML config file ``--config`` reads back; the token redacted, unset values commented."""
    lines = ["# vidplan serve: effective settings (flags > VIDPLAN_* variables > config file > defaults)"]
    for name, field in ServeSettings.model_fields.items():
        value = getattr(settings, name)
        where = f"from {origin[name]}; " if origin else ""
        if name == "token" and value is not None:
            # Commented out, so that the printed file read back does not set "<redacted>" as the token.
            lines.append(f'# token = "{REDACTED}"  # {where}set; never printed')
            continue
        if name == "max_image_size":
            value = settings.max_image_size_text
        elif isinstance(value, Path):
            value = str(value)
        comment = f"  # {where}{field.description}" if field.description else ""
        if value is None:
            lines.append(f"# {name} = (unset){comment}")
        else:
            lines.append(f"{name} = {_toml_value(value)}{comment}")
    return "\n".join(lines) + "\n"
