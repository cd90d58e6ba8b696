"""Frozen configs of the plan service and of the servers around it; defaults are the production ones."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServiceConfig:
    """Knobs of the transport-free :class:`~vidplan_server.serving.service.PlanService`."""

    max_queue: int = 4  # requests allowed to wait for the planner thread (>= 1); past it they are refused at once
    session_ttl_s: float = 60.0  # a session idle this long (server clock, s) is dropped
    max_sessions: int = 256  # past this the least recently used session is dropped
    session_frames: int = 32  # ring buffer per session (frames); >= (T - 1) * frame_stride + 1 is needed
    decode_threads: int = 2  # threads decoding JPEG / PNG off the event loop (OpenCV releases the GIL)
    deadline_margin_s: float = 0.005  # kept back from a deadline for encoding and sending the reply
    max_instruction_chars: int = 1000
    max_history_frames: int = 64  # observations a request may carry in ``history``

    def __post_init__(self) -> None:
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be >= 1 (a request needs a place to wait), got {self.max_queue}")
        if self.session_ttl_s <= 0 or self.max_sessions < 1:
            raise ValueError("session_ttl_s must be > 0 and max_sessions >= 1")
    max_nominal_steps: int = 150  # rows of a nominal chunk (10 s at 15 Hz)


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

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None and self.tls_key is not None
