"""``vidplan serve``: options and handler (``vidplan_server/cli.py`` only registers the subparser)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from dataclasses import replace
from pathlib import Path

from vidplan_server.argtypes import CliError, check_device, non_negative_int, port, positive_float, positive_int
from vidplan_server.serving.config import ServerConfig, ServiceConfig

#: PlannerConfig's defaults of the proposal mix, for --help without importing torch (a test keeps them equal).
DEFAULT_POLICY_SAMPLES = 6
DEFAULT_POLICY_PERTURBATIONS = 0
MAX_PROPOSALS = 64

DESCRIPTION = (
    "Serve the planner over gRPC (service vidplan.v1.VidPlan: Plan, StreamPlan, GetInfo, plus grpc.health.v1 and "
    "server reflection) and HTTP (POST /v1/plan, GET /v1/info, /livez, /readyz, /metrics, OpenAPI docs at /docs) "
    "in one process and one event loop. The model loads and warms up before health reports SERVING and /readyz "
    "200. Plans run one at a time on a single planner thread; past --max-queue waiting requests new ones are "
    "refused at once (gRPC RESOURCE_EXHAUSTED, HTTP 503 with Retry-After); a request whose deadline passes while it "
    "waits leaves the queue then (DEADLINE_EXCEEDED, HTTP 504). SIGTERM or Ctrl-C shuts down gracefully: health goes "
    "NOT_SERVING, new requests are refused, in-flight ones finish. With a bundle that has a policy, proposals "
    "include --policy-samples chunks of it, and a request may ask for options.mode policy: the policy's own chunk "
    "(safety-checked, no world model), the baseline to compare plans against."
)


def image_size(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` (either orientation) -> (shorter side, longer side)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT in pixels, e.g. 1280x720, got {text!r}") from None
    if min(width, height) < 1:
        raise argparse.ArgumentTypeError(f"sides must be >= 1, got {text!r}")
    return min(width, height), max(width, height)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``vidplan serve``."""
    d, s = ServerConfig(), ServiceConfig()
    p.add_argument(
        "--ckpt",
        type=Path,
        default=None,
        help="checkpoint folder with codec, world, flow_map, uq, value and semantic modules "
        "(default: the bundled checkpoint)",
    )
    p.add_argument("--device", default="cpu", help="torch device for the planner, e.g. cpu, cuda, cuda:1 (default cpu)")
    p.add_argument(
        "--policy-samples",
        type=non_negative_int,
        default=None,
        metavar="K",
        help="proposals sampled from the bundle's policy per plan when a request sends no nominal chunk and leaves "
        f"options.policy_samples unset; the Jacobian basis bank fills the rest of the N (0-{MAX_PROPOSALS}; "
        f"default {DEFAULT_POLICY_SAMPLES}; ignored by a bundle without a policy)",
    )
    p.add_argument(
        "--policy-perturbations",
        type=non_negative_int,
        default=None,
        metavar="P",
        help="perturbed copies of those policy samples, within the N, when a request leaves "
        f"options.policy_perturbations unset (0-{MAX_PROPOSALS}; default {DEFAULT_POLICY_PERTURBATIONS}: the "
        "samples already differ)",
    )
    p.add_argument("--host", default=d.host,
                   help=f"address both servers bind (default {d.host}: this machine only; use 0.0.0.0 for robots "
                   "on the network, together with --token and TLS)")
    p.add_argument(
        "--grpc-port",
        type=port,
        default=d.grpc_port,
        help=f"gRPC port; 0 picks a free one, -1 disables gRPC (default {d.grpc_port})",
    )
    p.add_argument(
        "--http-port",
        type=port,
        default=d.http_port,
        help=f"HTTP port; 0 picks a free one, -1 disables HTTP (default {d.http_port})",
    )
    p.add_argument(
        "--max-queue",
        type=positive_int,
        default=s.max_queue,
        help="requests allowed to wait while the planner is busy; more are refused at once instead of "
        f"queueing latency (default {s.max_queue})",
    )
    p.add_argument(
        "--session-ttl",
        type=positive_float,
        default=s.session_ttl_s,
        metavar="SECONDS",
        help=f"drop a robot session's frame history after this long without a request (default {s.session_ttl_s:g})",
    )
    p.add_argument(
        "--max-sessions",
        type=non_negative_int,
        default=s.max_sessions,
        help=f"sessions kept; past it the least recently used is dropped (default {s.max_sessions})",
    )
    p.add_argument(
        "--token",
        default=None,
        help="require 'authorization: Bearer TOKEN' on plan and info calls of both transports, checked before "
        "the request is parsed (health and readiness stay open; metrics, docs and reflection see "
        "--public-metrics); default: the VIDPLAN_TOKEN environment variable if set, else no authentication",
    )
    p.add_argument(
        "--public-metrics",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with --token: whether /metrics, the OpenAPI docs (/docs, /redoc, /openapi.json) and gRPC reflection "
        "stay open without it (they never show session ids or instructions); default: open when --host is a "
        "loopback address, protected otherwise",
    )
    p.add_argument(
        "--tls-cert",
        type=Path,
        default=None,
        help="PEM certificate chain; with --tls-key both transports use TLS (default: plaintext)",
    )
    p.add_argument("--tls-key", type=Path, default=None, help="PEM private key of --tls-cert")
    p.add_argument(
        "--max-message-mb",
        type=positive_float,
        default=d.max_message_bytes / 2**20,
        help="largest gRPC message in MiB, both directions (default 32: room for raw 180x320 "
        "views plus carried history)",
    )
    p.add_argument(
        "--max-image-size",
        type=image_size,
        default=s.max_image_size,  # (shorter side, longer side), as image_size returns it
        metavar="WxH",
        help="largest camera image accepted, either orientation, refused from its header before decoding "
        f"(default {s.max_image_size[1]}x{s.max_image_size[0]}: DROID's 720p; the model sees 64x64)",
    )
    p.add_argument(
        "--max-session-mb",
        type=positive_float,
        default=s.max_session_bytes / 2**20,
        help="memory all robot sessions together may hold (frames and ids, MiB); past it the least recently used "
        f"sessions are dropped (default {s.max_session_bytes / 2**20:g})",
    )
    p.add_argument(
        "--shutdown-grace",
        type=positive_float,
        default=d.shutdown_grace_s,
        metavar="SECONDS",
        help=f"on SIGTERM, how long in-flight plans may take to finish (default {d.shutdown_grace_s:g})",
    )
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default=d.log_level,
        help=f"log level of the server and uvicorn (default {d.log_level})",
    )


def planner_config_from_args(args: argparse.Namespace):
    """The :class:`~vidplan_server.planning.planner.PlannerConfig` of ``vidplan serve`` (imports torch); ValueError
    names a bad option."""
    from vidplan_server.planning.planner import PlannerConfig

    config = PlannerConfig()
    changes = {}
    for flag, name in (("--policy-samples", "policy_samples"), ("--policy-perturbations", "policy_perturbations")):
        value = getattr(args, name, None)
        if value is None:
            continue
        if not 0 <= value <= config.max_proposals:
            raise ValueError(f"{flag}: must be in [0, {config.max_proposals}], got {value}")
        changes[name] = value
    return replace(config, **changes)


def configs_from_args(args: argparse.Namespace) -> tuple[ServerConfig, ServiceConfig]:
    """Check the options (ValueError names the bad one) and build the configs."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path is not None and not path.is_file():
            raise ValueError(f"{flag} {path}: no such file")
    if args.grpc_port == -1 and args.http_port == -1:
        raise ValueError("--grpc-port -1 and --http-port -1: nothing to serve")
    if args.grpc_port > 0 and args.grpc_port == args.http_port:
        raise ValueError(f"--grpc-port and --http-port are both {args.grpc_port}")
    server = ServerConfig(
        host=args.host,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        token=args.token if args.token is not None else (os.environ.get("VIDPLAN_TOKEN") or None),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        max_message_bytes=int(args.max_message_mb * 2**20),
        shutdown_grace_s=args.shutdown_grace,
        log_level=args.log_level,
        public_metrics=args.public_metrics,
    )
    service = ServiceConfig(max_queue=args.max_queue, session_ttl_s=args.session_ttl, max_sessions=args.max_sessions,
                            max_image_size=tuple(args.max_image_size),
                            max_session_bytes=int(args.max_session_mb * 2**20))
    return server, service


def run(args: argparse.Namespace) -> int:
    """Handler of ``vidplan serve``: load, warm up, serve until SIGTERM / SIGINT."""
    try:
        server_config, service_config = configs_from_args(args)
        planner_config = planner_config_from_args(args)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    check_device(args.device)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from vidplan_server.planning.planner import Planner
    from vidplan_server.serving.server import VidPlanServer
    from vidplan_server.serving.service import PlanService

    planner = Planner.load(args.ckpt, device=args.device, config=planner_config)
    service = PlanService(planner, service_config)

    async def main() -> None:
        server = VidPlanServer(service, server_config)
        await server.serve_until_signal()

    asyncio.run(main())
    return 0
