"""``vidplan loadtest``: virtual robots replaying recorded episodes against a running server (options, handler).

The work is :mod:`vidplan_server.apps.loadtest`; this module only turns the options into its config.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from vidplan_server.argtypes import CliError, non_negative_int, port, positive_float, positive_int

DESCRIPTION = (
    "Load-test a running `vidplan serve` with virtual robots. Each robot replays a recorded episode (--data: our "
    "recordings or a DROID LeRobot port) at --control-hz over its own connection and session: at each control tick "
    "it is at the next step of its episode (episodes loop), and whenever the open-loop horizon of its last chunk has "
    "run out it sends that step's JPEG views and state, with the history the model sees, and a deadline -- as the "
    "robot client's RobotLoop does. Robots start staggered over one re-planning interval. Latency is recorded in an "
    "HDR histogram corrected for coordinated omission at the expected request interval (horizon / rate); shows live "
    "progress, then a one-screen summary, and writes OUT/loadtest.json, OUT/percentiles.png and OUT/timeline.png. "
    "With --ramp, runs 1, 1 + --ramp-step, ... robots (up to --robots), each for --duration, until p99 exceeds the "
    "deadline or an error appears, and reports the largest count that held. The server's resident memory is sampled "
    "from its /metrics (HTTP port) throughout: a long --duration (e.g. 1800) is a soak test. Traffic goes to the "
    "--target host only."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``vidplan loadtest``."""
    p.add_argument(
        "--target",
        required=True,
        metavar="HOST:PORT",
        help="the server: its gRPC port with --transport grpc (vidplan serve's --grpc-port, default 50051), its "
        "HTTP port with --transport http (--http-port, default 8000)",
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="DIR",
        help="LeRobot dataset the robots replay (e.g. outputs/data/sim_val, or a lerobot/droid_1.0.1 download)",
    )
    p.add_argument(
        "--transport", choices=("grpc", "http"), default="grpc", help="unary gRPC Plan or POST /v1/plan (default grpc)"
    )
    p.add_argument(
        "--robots",
        type=positive_int,
        default=1,
        metavar="R",
        help="virtual robots, each with its own connection and session (with --ramp: the most to try) (default 1)",
    )
    p.add_argument(
        "--duration",
        type=positive_float,
        default=60.0,
        metavar="S",
        help="seconds of the run, or of each ramp stage; 1800 makes a soak test (default 60)",
    )
    p.add_argument(
        "--open-loop-horizon",
        type=positive_int,
        default=8,
        metavar="K",
        help="chunk rows a robot executes before it needs the next plan, so it re-plans every K control steps "
        "when the server keeps up (default 8, as DROID's pi0.5 client)",
    )
    p.add_argument(
        "--control-hz",
        type=positive_float,
        default=15.0,
        metavar="HZ",
        help="control rate at which each robot steps through its episode (default 15, DROID's)",
    )
    p.add_argument(
        "--deadline-ms",
        type=positive_int,
        default=None,
        metavar="D",
        help="deadline of every request (options.deadline_ms), and the latency budget of the miss rate and the ramp "
        "(default: the open-loop horizon's span, K / HZ = 533 ms)",
    )
    p.add_argument(
        "--ramp",
        action="store_true",
        help="add --ramp-step robots per stage, from 1 up to --robots, until p99 exceeds the deadline or errors "
        "appear; report the largest count that held",
    )
    p.add_argument(
        "--ramp-step", type=positive_int, default=1, metavar="N", help="robots added per ramp stage (default 1)"
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds at the start of each run or stage whose requests are left out of the statistics, and after "
        "which memory growth is measured (default 5; use e.g. 120 for a soak)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("outputs/loadtest"),
        metavar="DIR",
        help="folder for loadtest.json, percentiles.png and timeline.png (created; default outputs/loadtest)",
    )
    p.add_argument(
        "--token",
        default=None,
        help="bearer token of the server (default: the VIDPLAN_TOKEN environment variable)",
    )
    p.add_argument(
        "--root-cert", default=None, metavar="PEM", help="root certificate of a TLS server (both transports)"
    )
    p.add_argument(
        "--metrics-port",
        type=port,
        default=None,
        metavar="PORT",
        help="the server's HTTP port on the --target host, for its /metrics (resident memory); default: the "
        "--target port with --transport http, none with grpc (memory is then not sampled)",
    )
    p.add_argument(
        "--memory-every",
        type=positive_float,
        default=10.0,
        metavar="S",
        help="seconds between memory samples (default 10)",
    )
    p.add_argument(
        "--episodes",
        type=positive_int,
        default=None,
        metavar="E",
        help="how many of the dataset's episodes (the first E) the robots replay in turn (default: one per robot, "
        "as many as the dataset has)",
    )
    p.add_argument(
        "--proposals",
        type=positive_int,
        default=None,
        metavar="N",
        help="options.num_proposals of every request (default: the server's)",
    )
    p.add_argument(
        "--refine-iters",
        type=non_negative_int,
        default=None,
        metavar="I",
        help="options.refine_iters of every request (default: the server's)",
    )
    p.add_argument("--seed", type=int, default=0, metavar="S", help="options.seed of every request (default 0)")
    p.add_argument(
        "--timeout-slack",
        type=float,
        default=1.0,
        metavar="S",
        help="how long past the deadline a robot still waits for a reply, so late replies are measured rather than "
        "cut (default 1)",
    )
    p.add_argument("--quiet", action="store_true", help="no live progress line")


def run(args: argparse.Namespace) -> int:
    """Handler of ``vidplan loadtest``."""
    import asyncio

    from tqdm import tqdm

    from vidplan_server.apps.loadtest.app import run_loadtest
    from vidplan_server.apps.loadtest.config import LoadTestConfig, LoadTestError
    from vidplan_server.apps.loadtest.replay import load_episodes

    if not args.data.is_dir():
        raise CliError(f"--data {args.data}: dataset folder does not exist")
    try:
        config = LoadTestConfig(
            target=args.target,
            data=str(args.data),
            transport=args.transport,
            robots=args.robots,
            duration_s=args.duration,
            open_loop_horizon=args.open_loop_horizon,
            control_hz=args.control_hz,
            deadline_ms=args.deadline_ms,
            ramp=args.ramp,
            ramp_step=args.ramp_step,
            warmup_s=args.warmup,
            timeout_slack_s=args.timeout_slack,
            token=args.token or os.environ.get("VIDPLAN_TOKEN") or None,
            root_cert=args.root_cert,
            metrics_port=args.metrics_port,
            memory_every_s=args.memory_every,
            episodes=args.episodes,
            proposals=args.proposals,
            refine_iters=args.refine_iters,
            seed=args.seed,
        )
        count = config.episodes or max(config.stages())
        with tqdm(total=count, desc="encoding episodes", unit="ep", disable=args.quiet, leave=False) as bar:
            episodes = load_episodes(args.data, count, config.jpeg_quality, progress=lambda n: bar.update(1))
        report = asyncio.run(run_loadtest(config, episodes, args.out, progress=not args.quiet))
    except LoadTestError as exc:
        raise CliError(str(exc)) from None
    print(report["summary"])
    return 0


def register(groups) -> None:
    """Add ``vidplan loadtest`` to the top-level subparsers ``groups``."""
    p = groups.add_parser(
        "loadtest",
        help="virtual robots replaying recorded episodes against a running server: latency, plans/s, capacity",
        description=DESCRIPTION,
    )
    add_arguments(p)
    p.set_defaults(func=run)
