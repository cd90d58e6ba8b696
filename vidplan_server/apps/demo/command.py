"""``vidplan demo``: its options and its handler (``vidplan_server/cli.py`` only registers the subparser)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vidplan_server.argtypes import CliError, non_negative_int, positive_float, positive_int

DESCRIPTION = (
    "Run one simulated DROID episode (PyBullet scene, three cameras, 15 Hz) through the thin robot client "
    "(vidplan_client: VidPlanClient + RobotLoop) against a planning server: the one at --server, or a `vidplan "
    "serve` started here on free localhost ports and stopped with SIGTERM at the end. Writes OUT/demo.mp4 (the "
    "three views and the executed plan's uncertainty heatmaps), OUT/report.json (success as the simulator judges "
    "it, steps, plans, latency, holds; also printed), OUT/server.log and, with a server started here, "
    "OUT/planlog.jsonl (its dashboard events: `vidplan dashboard --replay OUT`). Time: the simulator steps once per "
    "command; the loop clock is wall time / --slowdown, so a plan taking L wall seconds costs the robot "
    "L / slowdown simulated seconds."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``vidplan demo``."""
    p.add_argument(
        "--server",
        default=None,
        metavar="ADDR",
        help="host:port of a running `vidplan serve` (gRPC); default: start one here for this episode "
        "on free localhost ports and stop it at the end",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("outputs/demo"),
        metavar="DIR",
        help="folder for demo.mp4, report.json and server.log (created; default outputs/demo)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="S",
        help="seed of the scene and task (same seed, same scene) and of the planner's noise (default 0)",
    )
    p.add_argument(
        "--steps",
        type=positive_int,
        default=150,
        metavar="N",
        help="control steps of the episode at 15 Hz (default 150, i.e. 10 simulated seconds)",
    )
    p.add_argument(
        "--instruction",
        default=None,
        metavar="TEXT",
        help="language task sent to the planner (default: the sampled task's own, e.g. 'put the red "
        "cube in the tray'); success is always judged on the sampled task",
    )
    p.add_argument(
        "--split",
        choices=("train", "val", "ood"),
        default="train",
        help="task sampling: train / val objects and colours, or ood (novel targets, more distractors) (default train)",
    )
    p.add_argument(
        "--open-loop",
        type=positive_int,
        default=8,
        metavar="K",
        help="rows of a chunk executed at most, counted from the observation it answers (default 8 "
        "of 15, about 0.53 s)",
    )
    p.add_argument(
        "--proposals",
        type=positive_int,
        default=None,
        metavar="N",
        help="candidate chunks the planner rolls out per plan (default: the server's, 12)",
    )
    p.add_argument(
        "--refine-iters",
        type=non_negative_int,
        default=None,
        metavar="I",
        help="gradient refinement steps on the winner, 0 = selection only (default: the server's, 3)",
    )
    p.add_argument(
        "--flow-steps",
        type=positive_int,
        default=None,
        metavar="K",
        help="flow-map steps per rollout (default: the server's, 1)",
    )
    p.add_argument(
        "--plan-timeout",
        type=positive_float,
        default=1.0,
        metavar="SECONDS",
        help="deadline of one plan request in simulated seconds; the robot holds or executes the "
        "previous chunk meanwhile (default 1.0)",
    )
    p.add_argument(
        "--slowdown",
        type=positive_float,
        default=5.0,
        metavar="FACTOR",
        help="wall seconds per simulated second: 1 = real time (the robot sees the server's true "
        "latency; use it with a GPU server); the default 5 makes a CPU server look 5 times faster, "
        "as a GPU would be (default 5)",
    )
    p.add_argument(
        "--view-scale",
        type=positive_int,
        default=3,
        metavar="S",
        help="video: each view and heatmap enlarged S times (default 3: 192x192 per 64x64 view)",
    )
    p.add_argument(
        "--token",
        default=None,
        help="bearer token for the server (default: the VIDPLAN_TOKEN environment variable; a server "
        "started here gets the same)",
    )
    p.add_argument(
        "--ckpt",
        type=Path,
        default=None,
        metavar="DIR",
        help="checkpoint folder for the server started here (default: the bundled checkpoint); not with --server",
    )
    p.add_argument(
        "--device",
        default=None,
        help="torch device of the server started here, e.g. cpu or cuda (default cpu); not with --server",
    )
    p.add_argument(
        "--startup-timeout",
        type=positive_float,
        default=180.0,
        metavar="SECONDS",
        help="how long the server started here may take to load and report SERVING (default 180)",
    )


def run(args: argparse.Namespace) -> int:
    """Handler of ``vidplan demo``."""
    from vidplan_server.apps.demo.app import DemoError, run_demo

    try:
        report = run_demo(args)
    except DemoError as exc:
        raise CliError(str(exc)) from None
    print(json.dumps(report, indent=2))
    print(f"wrote {report['video']} and {args.out / 'report.json'}", file=sys.stderr)
    if report["plans_used"] * 2 < report["plans_sent"]:
        print(
            f"vidplan demo: most plans came too late or not at all (median {report['median_plan_latency_ms']} ms "
            f"for a {args.open_loop}-row horizon at --slowdown {args.slowdown:g}); the robot held instead. Try "
            "--slowdown 5 (a server 5 times faster), fewer --proposals / --refine-iters, or a larger --open-loop.",
            file=sys.stderr,
        )
    return 0
