"""How the client reaches the server: target, TLS, bearer token, deadlines, retries and keepalive.

Retries are gRPC's own (a ``retryPolicy`` in the channel's service config): only ``UNAVAILABLE`` is retried,
with exponential backoff and jitter, and every attempt counts against the one per-call deadline, so a retry
can never make the robot wait past it. gRPC caps ``max_attempts`` at 5.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import grpc

SERVICE = "vidplan.v1.VidPlan"
HEALTH_SERVICE = "grpc.health.v1.Health"


@dataclass(frozen=True)
class ClientConfig:
    """Connection settings. Times in seconds."""

    target: str = "localhost:50051"  # host:port of the server (any gRPC target string)
    token: str | None = None  # bearer token, sent as `authorization: Bearer <token>` metadata
    root_cert_path: str | None = None  # PEM root certificate(s); implies TLS
    tls: bool = False  # TLS with the system's root certificates (when no root_cert_path is given)
    plan_timeout_s: float = 1.0  # default deadline of one Plan call, all retries included
    info_timeout_s: float = 5.0  # default deadline of GetInfo and health checks
    max_attempts: int = 4  # attempts per call for UNAVAILABLE (1 = no retry; gRPC caps it at 5)
    initial_backoff_s: float = 0.05  # first retry waits a random time in [0, initial_backoff_s]
    max_backoff_s: float = 0.5  # the backoff never grows past this
    backoff_multiplier: float = 2.0  # backoff growth per attempt
    keepalive_time_s: float = 20.0  # ping an idle connection this often to notice a dead server
    keepalive_timeout_s: float = 10.0  # a ping unanswered for this long closes the connection
    max_message_mb: int = 64  # largest message either way (heatmaps and predicted frames are big)

    def __post_init__(self) -> None:
        if not self.target:
            raise ValueError("target must be host:port")
        if not 1 <= self.max_attempts <= 5:
            raise ValueError(f"max_attempts must be in 1..5 (gRPC's cap), got {self.max_attempts}")
        if min(self.plan_timeout_s, self.info_timeout_s, self.initial_backoff_s, self.max_backoff_s) <= 0:
            raise ValueError("timeouts and backoffs must be > 0")
        if self.backoff_multiplier < 1:
            raise ValueError("backoff_multiplier must be >= 1")
        if self.root_cert_path is not None and not Path(self.root_cert_path).is_file():
            raise ValueError(f"root certificate {self.root_cert_path} does not exist")

    @property
    def secure(self) -> bool:
        return self.tls or self.root_cert_path is not None


def service_config(config: ClientConfig) -> str:
    """The channel's service config JSON: retry UNAVAILABLE only, on both services."""
    retry = {
        "maxAttempts": config.max_attempts,
        "initialBackoff": f"{config.initial_backoff_s}s",
        "maxBackoff": f"{config.max_backoff_s}s",
        "backoffMultiplier": config.backoff_multiplier,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    method_config = {"name": [{"service": SERVICE}, {"service": HEALTH_SERVICE}]}
    if config.max_attempts > 1:
        method_config["retryPolicy"] = retry
    return json.dumps({"methodConfig": [method_config]})


def channel_options(config: ClientConfig) -> list[tuple[str, object]]:
    size = config.max_message_mb * 1024 * 1024
    return [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config(config)),
        ("grpc.keepalive_time_ms", int(config.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(config.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_send_message_length", size),
        ("grpc.max_receive_message_length", size),
    ]


def channel_credentials(config: ClientConfig) -> grpc.ChannelCredentials | None:
    """TLS credentials, or None for a plaintext channel."""
    if not config.secure:
        return None
    roots = Path(config.root_cert_path).read_bytes() if config.root_cert_path else None
    return grpc.ssl_channel_credentials(root_certificates=roots)


def call_metadata(config: ClientConfig) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {config.token}"),) if config.token else ()


def open_channel(config: ClientConfig) -> grpc.Channel:
    credentials = channel_credentials(config)
    if credentials is None:
        return grpc.insecure_channel(config.target, options=channel_options(config))
    return grpc.secure_channel(config.target, credentials, options=channel_options(config))


def open_aio_channel(config: ClientConfig) -> grpc.aio.Channel:
    credentials = channel_credentials(config)
    if credentials is None:
        return grpc.aio.insecure_channel(config.target, options=channel_options(config))
    return grpc.aio.secure_channel(config.target, credentials, options=channel_options(config))
