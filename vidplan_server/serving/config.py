"""Frozen configs of the plan service and of the servers around it; defaults are the production ones."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from vidplan_server.serving.dashboard.config import DashboardConfig


@dataclass(frozen=True)
class ServiceConfig:
    """Knobs of the transport-free :class:`~vidplan_server.serving.service.PlanService`."""

    max_queue: int = 4  # requests allowed to wait for the planner thread (>= 1); past it they are refused at once
    session_ttl_s: float = 60.0  # a session idle this long (server clock, s) is dropped
    max_sessions: int = 256  # past this the least recently used session is dropped
    # All sessions together never hold more than this (decoded model-sized frames and ids, bytes); past it the
    # least recently used sessions are dropped. 256 sessions of the bundled model hold about 70 MB.
    max_session_bytes: int = 256 * 2**20
    session_frames: int = 32  # ring buffer per session (frames); >= (T - 1) * frame_stride + 1 is needed
    decode_threads: int = 2  # threads decoding JPEG / PNG off the event loop (OpenCV releases the GIL)
    deadline_margin_s: float = 0.005  # kept back from a deadline for encoding and sending the reply
    # One log line per plan request (request id, session, transport, outcome, latency); refusals rate-limited.
    access_log: bool = False
    max_instruction_chars: int = 1000
    max_session_id_chars: int = 128  # printable ASCII; ids are stored, so they are bounded
    # Observations a request may carry in ``history``; None = what the model can use: the span its T frames cover
    # at the control rate, T * frame_stride (6 for the bundled model), the same span a session keeps.
    max_history: int | None = None
    max_nominal_steps: int = 150  # rows of a nominal chunk (10 s at 15 Hz)
    # Largest image accepted, (shorter side, longer side) in pixels, either orientation: 720p. DROID records
    # 1280x720 and stores 180x320; a bigger image costs decode time for pixels the 64x64 model never sees.
    max_image_size: tuple[int, int] = (720, 1280)
    # Cross-robot batching (batching.py): calls queued within this window of the oldest are planned in one batched
    # rollout and scoring; 0 turns it off. A lone robot waits the window once per plan when the planner is idle.
    # Off by default: the server settings turn it on (5 ms) for a CUDA planner (ServeSettings.batch_window_ms).
    batch_window_s: float = 0.0
    max_batch: int = 8  # robots in one batch at most (the queue bounds it too: max_queue waiting calls)

    def __post_init__(self) -> None:
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be >= 1 (a request needs a place to wait), got {self.max_queue}")
        if self.session_ttl_s <= 0 or self.max_sessions < 1 or self.max_session_bytes < 1:
            raise ValueError("session_ttl_s must be > 0, max_sessions and max_session_bytes >= 1")
        short, long = self.max_image_size
        if not 1 <= short <= long:
            raise ValueError(f"max_image_size must be (shorter side, longer side) >= 1, got {self.max_image_size}")
        if self.batch_window_s < 0:
            raise ValueError(f"batch_window_s must be >= 0 (0: no batching), got {self.batch_window_s}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.max_history is not None and self.max_history < 0:
            raise ValueError(f"max_history must be >= 0, got {self.max_history}")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is only reachable from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerConfig:
    """Network side of ``vidplan serve``: ports, security and shutdown."""

    # Decided: loopback by default, where no token is needed; a deployment binds 0.0.0.0 with --token / TLS.
    host: str = "127.0.0.1"
    grpc_port: int = 50051  # 0 = pick a free port (tests); -1 = no gRPC server
    http_port: int = 8000  # 0 = pick a free port (tests); -1 = no HTTP server
    token: str | None = None  # bearer token both transports require; None = no authentication
    tls_cert: Path | None = None  # PEM certificate chain; with tls_key, both transports use TLS
    tls_key: Path | None = None  # PEM private key
    # Three 180x320 raw RGB views are 0.5 MB per frame; 32 MB leaves room for long carried histories.
    max_message_bytes: int = 32 * 1024 * 1024
    shutdown_grace_s: float = 30.0  # how long in-flight requests may take to finish on SIGTERM
    log_level: str = "info"
    log_format: str = "text"  # "text", or "json": one JSON object per line, uvicorn's lines included
    # With a token: whether /metrics, the OpenAPI docs (/docs, /redoc, /openapi.json) and gRPC reflection stay
    # open without it. None = open when bound to loopback only, protected otherwise. Health (grpc.health.v1,
    # /livez, /readyz) is always open for probes.
    public_metrics: bool | None = None
    # The operator dashboard at /dashboard (None: not served), and a plan log its events are appended to.
    dashboard: DashboardConfig | None = DashboardConfig()
    dashboard_record: Path | None = None

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None and self.tls_key is not None

    @property
    def metrics_public(self) -> bool:
        """Whether metrics, docs and reflection need no token (always true without a token)."""
        if not self.token:
            return True
        return is_loopback(self.host) if self.public_metrics is None else self.public_metrics
