"""``vidplan serve``: options and handler (``vidplan_server/cli.py`` only registers the subparser)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import get_args

from vidplan_server.argtypes import CliError, check_device, non_negative_int, port, positive_float, positive_int
from vidplan_server.serving.config import ServerConfig, ServiceConfig
from vidplan_server.serving.settings import (
    ServeSettings,
    config_path,
    load_settings,
    parse_image_size,
    render,
    sources,
)

#: PlannerConfig's defaults of the proposal mix, for --help without importing torch (a test keeps them equal).
DEFAULT_POLICY_SAMPLES = 12
DEFAULT_POLICY_PERTURBATIONS = 0
DEFAULT_POLICY_PULLS = 0
DEFAULT_GOAL_SAMPLES = 12
DEFAULT_POLICY_TEMPERATURE = 0.5
DEFAULT_COHERENCE_SAMPLES = 8
DEFAULT_KEEP_MARGIN = 0.01
DEFAULT_KEEP_DRAWS = 0
DEFAULT_PROGRESS_WEIGHT = 1.0
MAX_PROPOSALS = 64
#: ``--uq-method``'s choices: the settings' (planning.types.UQ_METHODS; a test keeps them equal).
UQ_METHOD_CHOICES = get_args(ServeSettings.model_fields["uq_method"].annotation)
#: How each method's module is trained.
TRAIN_STAGE = {"c3-fsc": "c3 --method fsc", "c3-cs": "c3 --method cs", "squbed": "squbed"}

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


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0:  # NaN too
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def image_size(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` (either orientation) -> (shorter side, longer side)."""
    try:
        return parse_image_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``vidplan serve``. Every option defaults to None ("not given"), so that the variable
    ``VIDPLAN_<NAME>`` or the config file may set it (:mod:`~vidplan_server.serving.settings`); the help states
    the default that applies when none does."""
    d, s = ServerConfig(), ServiceConfig()
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="TOML file of settings named like the options (max_queue = 8); flags and VIDPLAN_* variables win "
        "over it (default: $VIDPLAN_CONFIG if set, else none)",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective settings as a config file (where each came from; the token redacted) and exit",
    )
    p.add_argument(
        "--ckpt",
        type=Path,
        default=None,
        help="checkpoint folder with codec, world, flow_map, uq, value and semantic modules "
        "(default: the bundled checkpoint)",
    )
    p.add_argument("--device", default=None, help="torch device for the planner, e.g. cpu, cuda, cuda:1 (default cpu)")
    p.add_argument(
        "--policy-samples",
        type=non_negative_int,
        default=None,
        metavar="K",
        help="proposals sampled from the bundle's policy per plan when a request sends no nominal chunk and leaves "
        f"options.policy_samples unset; the Jacobian basis bank fills the rest of the N, if any (0-{MAX_PROPOSALS}; "
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
    p.add_argument(
        "--policy-pulls",
        type=non_negative_int,
        default=None,
        metavar="U",
        help="copies of the first U policy samples bent toward where the bundle's locator puts the instructed "
        "object (in the table plane, at most 10 cm, only while the hand is more than 10 cm from it), within the N "
        f"(0-{MAX_PROPOSALS}; default {DEFAULT_POLICY_PULLS}: off, the closed loop measured it worse with the "
        "bundled policy; needs a locator)",
    )
    p.add_argument(
        "--goal-samples",
        type=non_negative_int,
        default=None,
        metavar="G",
        help="of the K policy samples, G come from the bundle's goal policy (module goal_policy), which also reads "
        "the semantic encoder's relevance map of the instruction, so it goes for the object the words name even "
        f"where the policy does not know them; only while the gripper is open (0-{MAX_PROPOSALS}; default "
        f"{DEFAULT_GOAL_SAMPLES}; ignored by a bundle without goal_policy)",
    )
    p.add_argument(
        "--goal-first",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with goal samples mixed with policy samples (--goal-samples below the policy samples), put the goal "
        "samples first: the goal policy's chunk that continues the running one is kept unless a policy sample beats "
        "it by the keep margin (default off: the policy's chunk is the one kept; README, closed-loop benchmark)",
    )
    p.add_argument(
        "--mix-radius",
        type=float,
        default=None,
        metavar="M",
        help="with goal samples mixed with policy samples, draw the policy's samples only while the hand is within M "
        "metres (horizontally) of where the locator puts the instructed object; farther away all samples are the "
        "goal policy's (0-10; default 0: mixed everywhere; needs a bundle with a locator)",
    )
    p.add_argument(
        "--mix-known-words",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with goal samples mixed with policy samples, draw the policy's samples only when the policy knows every "
        "word of the instruction (each is in its training vocabulary); otherwise all samples are the goal policy's, "
        "which follows the semantic map of words the policy never saw (default off; README, closed-loop benchmark)",
    )
    p.add_argument(
        "--policy-temperature",
        type=positive_float,
        default=None,
        metavar="T",
        help="standard deviation of the flow noise that the policy's and goal policy's samples start from (they "
        "were trained at 1; colder samples land nearer the policy's modes, warmer ones differ more), also for "
        f"`options.mode` policy, at most 4 (default {DEFAULT_POLICY_TEMPERATURE}; its closed-loop figures are in "
        "the README's policy section)",
    )
    p.add_argument(
        "--coherence-samples",
        type=positive_int,
        default=None,
        metavar="C",
        help="when a request sends its `reference` (the rows of the chunk the robot is executing that it has not "
        "executed yet; the robot client does), `options.mode` policy draws C samples and answers the one that "
        "continues it, and a plan makes the coherent one of its policy samples the chunk it keeps unless beaten: "
        f"the robot does not dither between the policy's modes; 1 turns it off, at most 64 (default "
        f"{DEFAULT_COHERENCE_SAMPLES}; measured in the README's policy section)",
    )
    p.add_argument(
        "--keep-margin",
        type=non_negative_float,
        default=None,
        metavar="M",
        help="score margin by which the best proposal must beat the robot's own chunk (the policy's first sample, or "
        f"a request's nominal) to replace it; 0 takes the plain argmax (default {DEFAULT_KEEP_MARGIN}: 3-7x the "
        "rollout noise of a score difference, measured on the bundled model)",
    )
    p.add_argument(
        "--keep-draws",
        type=non_negative_int,
        default=None,
        metavar="D",
        help="other noise draws under which the best proposal must also beat the robot's own chunk (by the margin) "
        "before replacing it: 2 D more rollouts when it would switch, a check that does not depend on the score's "
        f"scale (default {DEFAULT_KEEP_DRAWS}: the selection's draw only; bins uncertainty only)",
    )
    p.add_argument(
        "--progress-weight",
        type=non_negative_float,
        default=None,
        metavar="W",
        help="weight per metre of the progress term: each scored frame loses W x the distance from the chunk's "
        "commanded hand position to where the bundle's locator puts the instructed object; 0 scores without it "
        f"(default {DEFAULT_PROGRESS_WEIGHT}; ignored by a bundle without a locator)",
    )
    p.add_argument(
        "--progress-when-closed",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="whether the progress term also counts while the gripper is closed; --no-progress-when-closed counts it "
        "only while the gripper is open (once the hand holds the object, the locator's point moves with the hand and "
        "the term prefers chunks that move less); default on: leaving it out was measured no better in the closed "
        "loop (README, Planning)",
    )
    p.add_argument(
        "--uq-method",
        choices=UQ_METHOD_CHOICES,
        default=None,
        help="the uncertainty that weights the selection score (and the reported uncertainty, confidence and "
        "heatmaps) when a request leaves options.uq_method unset: bins (the 30-bin head), c3-fsc / c3-cs (C3's "
        "probes, `vidplan train c3`), squbed (S-QUBED, `vidplan train squbed`; n x m extra rollouts per proposal); "
        "a method other than bins needs its module in --ckpt; GetInfo lists the bundle's (default bins)",
    )
    p.add_argument(
        "--host",
        default=None,
        help=f"address both servers bind (default {d.host}: this machine only; use 0.0.0.0 for robots "
        "on the network, together with --token and TLS)",
    )
    p.add_argument(
        "--grpc-port",
        type=port,
        default=None,
        help=f"gRPC port; 0 picks a free one, -1 disables gRPC (default {d.grpc_port})",
    )
    p.add_argument(
        "--http-port",
        type=port,
        default=None,
        help=f"HTTP port; 0 picks a free one, -1 disables HTTP (default {d.http_port})",
    )
    p.add_argument(
        "--max-queue",
        type=positive_int,
        default=None,
        help="requests allowed to wait while the planner is busy; more are refused at once instead of "
        f"queueing latency (default {s.max_queue})",
    )
    p.add_argument(
        "--session-ttl",
        type=positive_float,
        default=None,
        metavar="SECONDS",
        help=f"drop a robot session's frame history after this long without a request (default {s.session_ttl_s:g})",
    )
    p.add_argument(
        "--max-sessions",
        type=non_negative_int,
        default=None,
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
        default=None,
        help="largest gRPC message in MiB, both directions (default 32: room for raw 180x320 "
        "views plus carried history)",
    )
    p.add_argument(
        "--max-image-size",
        type=image_size,
        default=None,  # (shorter side, longer side), as image_size returns it
        metavar="WxH",
        help="largest camera image accepted, either orientation, refused from its header before decoding "
        f"(default {s.max_image_size[1]}x{s.max_image_size[0]}: DROID's 720p; the model sees 64x64)",
    )
    p.add_argument(
        "--max-session-mb",
        type=positive_float,
        default=None,
        help="memory all robot sessions together may hold (frames and ids, MiB); past it the least recently used "
        f"sessions are dropped (default {s.max_session_bytes / 2**20:g})",
    )
    p.add_argument(
        "--batch-window-ms",
        type=non_negative_float,
        default=None,
        metavar="MS",
        help="cross-robot batching: plan calls that reach the planner's queue within this many milliseconds of the "
        "oldest waiting one are planned together (all proposals in one flow-map rollout, one uncertainty and reward "
        "pass), each robot answered with its own plan, as alone with the same seed, within its own deadline; calls "
        "whose options cannot share a batch (mode policy, another flow_steps or uq_method) are planned alone; 0 "
        "turns batching off (default: 5 on a CUDA device; 0 on CPU, where a batch of R robots costs what R plans "
        "cost one by one and the robots wait for each other -- measured in the README)",
    )
    p.add_argument(
        "--max-batch",
        type=positive_int,
        default=None,
        metavar="R",
        help="most robots planned in one batch; --max-queue bounds how many can wait to join one "
        f"(default {s.max_batch})",
    )
    p.add_argument(
        "--shutdown-grace",
        type=positive_float,
        default=None,
        metavar="SECONDS",
        help=f"on SIGTERM, how long in-flight plans may take to finish (default {d.shutdown_grace_s:g})",
    )
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default=None,
        help=f"log level of the server and uvicorn (default {d.log_level})",
    )
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=None,
        help="text lines for a terminal, or JSON lines (time, level, logger, message and, on request lines, "
        "request_id, session, outcome, latency_ms) for a log collector (default text)",
    )
    p.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="one log line per plan request: request id, session, transport, outcome and latency; never the "
        "token or frame bytes (refusals rate-limited as other request lines) (default off)",
    )
    dash = p.add_argument_group("operator dashboard (http://HOST:HTTP_PORT/dashboard)")
    dash.add_argument(
        "--dashboard",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve the operator dashboard at /dashboard on the HTTP port: every robot session, the "
        "watched one's plans and uncertainty heatmaps (its data behind --token) (default on)",
    )
    dash.add_argument(
        "--dashboard-hz",
        type=positive_float,
        default=None,
        metavar="HZ",
        help="heatmap renders per watched session and second, at most; rendered off the robots' "
        "critical path, only for sessions someone watches (default 2)",
    )
    dash.add_argument(
        "--dashboard-record",
        type=Path,
        default=None,
        metavar="FILE",
        help="append every session's dashboard events (plans, heatmaps at --dashboard-hz, the session "
        "list) to this plan log, for `vidplan dashboard --replay FILE` (default: none)",
    )
    ray = p.add_argument_group("scale-out on Ray Serve (pip install -e '.[scale]'; deploy/ray/)")
    ray.add_argument(
        "--ray",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve through Ray Serve: replicas of the same planning service behind Serve's HTTP proxy "
        "(--http-port) and gRPC proxy (--grpc-port), autoscaled on ongoing requests (default off)",
    )
    ray.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="Ray cluster to join, e.g. auto or ray://head:10001 (default: start a local Ray instance)",
    )
    ray.add_argument(
        "--ray-min-replicas",
        type=positive_int,
        default=None,
        metavar="N",
        help="replicas that are always up; never 0, a robot's planner must not cold-start (default 1)",
    )
    ray.add_argument(
        "--ray-max-replicas",
        type=positive_int,
        default=None,
        metavar="N",
        help="replicas the autoscaler may add when ongoing requests per replica exceed the target (default 1)",
    )
    ray.add_argument(
        "--ray-target-ongoing",
        type=positive_float,
        default=None,
        metavar="R",
        help="ongoing requests per replica the autoscaler aims at (default 2)",
    )
    ray.add_argument(
        "--ray-gpus-per-replica",
        type=float,
        default=None,
        metavar="G",
        help="GPUs each replica reserves; 0 for CPU replicas (default 0; with --device cuda use 1)",
    )
    ray.add_argument(
        "--ray-cpus-per-replica",
        type=positive_float,
        default=None,
        metavar="C",
        help="CPUs each replica reserves (default 1)",
    )
    ray.add_argument(
        "--ray-max-queued",
        type=positive_int,
        default=None,
        metavar="N",
        help="requests Serve holds while every replica is busy; more are refused at once (HTTP 503, "
        "gRPC RESOURCE_EXHAUSTED) (default 8)",
    )
    p.epilog = (
        "Every option can also be set by the environment variable VIDPLAN_<OPTION> (--max-queue: "
        "VIDPLAN_MAX_QUEUE=8) or by a key of the --config file (max_queue = 8); a flag wins over the variable, "
        "the variable over the file."
    )


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    """The effective settings: the options given over ``VIDPLAN_*`` over ``--config`` over the defaults; ValueError
    names a bad setting (its flag, variable and config key)."""
    flags = {name: getattr(args, name, None) for name in ServeSettings.model_fields}
    return load_settings(flags, config_path(getattr(args, "config", None)))


def planner_config(settings: ServeSettings):
    """The planner config of ``settings`` (imports torch); ValueError names a bad option."""
    return settings.planner_config()


def planner_config_from_args(args: argparse.Namespace):
    """:func:`planner_config` of the options ``args`` and the environment."""
    return planner_config(settings_from_args(args))


def configs(settings: ServeSettings) -> tuple[ServerConfig, ServiceConfig]:
    """Check the settings (ValueError names the bad one) and build the server's and the service's configs."""
    return settings.configs()


def configs_from_args(args: argparse.Namespace) -> tuple[ServerConfig, ServiceConfig]:
    """:func:`configs` of the options ``args`` and the environment."""
    return configs(settings_from_args(args))


def check_uq_method(settings: ServeSettings) -> None:
    """Refuse a ``--uq-method`` the bundle has no module for, before the model loads (CliError names the option)."""
    if settings.uq_method == "bins":
        return
    from vidplan_server.models.checkpoint import DEFAULT_CHECKPOINT
    from vidplan_server.planning.uq_methods import bundle_methods

    ckpt = settings.ckpt if settings.ckpt is not None else DEFAULT_CHECKPOINT
    offered = bundle_methods(ckpt)
    if settings.uq_method not in offered:
        raise CliError(
            f"--uq-method / VIDPLAN_UQ_METHOD {settings.uq_method}: the checkpoint {ckpt} has no module for it "
            f"(train one with `vidplan train {TRAIN_STAGE[settings.uq_method]}`); it offers {', '.join(offered)}"
        )


def run(args: argparse.Namespace) -> int:
    """Handler of ``vidplan serve``: load, warm up, serve until SIGTERM / SIGINT (``--print-config``: print the
    settings and exit)."""
    try:
        settings = settings_from_args(args)
        if args.print_config:
            flags = {name: getattr(args, name, None) for name in ServeSettings.model_fields}
            print(render(settings, sources(flags, config_path(args.config))), end="")
            return 0
        server_config, service_config = configs(settings)
        planner_cfg = planner_config(settings)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    check_device(settings.device)
    if not settings.ray:  # Ray replicas may see another file system; their planners refuse it the same way
        check_uq_method(settings)
    from vidplan_server.serving.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format, secrets=[settings.token_value])
    if settings.ray:
        from vidplan_server.serving import ray_serve

        return ray_serve.serve_until_signal(settings)

    from vidplan_server.planning.planner import Planner
    from vidplan_server.serving.server import VidPlanServer
    from vidplan_server.serving.service import PlanService

    planner = Planner.load(settings.ckpt, device=settings.device, config=planner_cfg)
    service = PlanService(planner, service_config)
    if server_config.dashboard is not None:  # heatmaps come from a process of their own, on the same model
        from dataclasses import replace

        from vidplan_server.serving.dashboard.config import RenderModel

        model = RenderModel(str(settings.ckpt) if settings.ckpt else None, settings.device, planner_cfg)
        server_config = replace(server_config, dashboard=replace(server_config.dashboard, render_model=model))

    async def main() -> None:
        server = VidPlanServer(service, server_config)
        await server.serve_until_signal()

    asyncio.run(main())
    return 0
