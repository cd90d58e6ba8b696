"""``vidplan eval closed-loop``: options, checks and the run (the parser lives in ``vidplan_server.cli``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from vidplan_server.argtypes import non_negative_int, positive_float, positive_int

DESCRIPTION = (
    "Closed-loop benchmark in the simulated DROID scene: each agent drives the robot at 15 Hz and is asked for a new "
    "action chunk every --open-loop-horizon steps (synchronously: simulated time waits for the agent, so the figures "
    "measure decisions, not this machine's speed). Every agent meets the same scenes (episode i of a split has the "
    "seed derived from --seed, the split and i), for a paired comparison. An episode ends when the task has been "
    "done for --success-hold-steps consecutive steps, or after --max-steps; success is the simulator's verdict then. "
    "Writes OUT/episodes/<split>/<agent>/<i>.json per episode (resumable: existing episodes are skipped; an agent "
    "that raises fails its episode with the cause), OUT/videos/<split>/<agent>/<i>.mp4 for the first --videos "
    "episodes (three views, and the executed plan's heatmaps when the agent sends them), and OUT/closed_loop.json, "
    "OUT/closed_loop.md and OUT/closed_loop.png over every episode in OUT: success with a Wilson 95 % interval, the "
    "paired difference to 'policy' (Newcombe's interval), instruction following (the first object grasped was the "
    "instructed one), failure causes, per split and task kind. --realtime runs vidplan through the real robot client "
    "and a planning server instead, so that planning latency costs simulated time."
)


def _names(choices: tuple[str, ...]):
    """argparse type: one name or a comma list, each from ``choices``."""

    def parse(text: str) -> list[str]:
        names = [t.strip() for t in text.split(",") if t.strip()]
        bad = [n for n in names if n not in choices]
        if not names or bad:
            raise argparse.ArgumentTypeError(
                f"expected names from {', '.join(choices)} (comma list allowed), got {text!r}"
            )
        return names

    return parse


def seed_list(text: str) -> list[int]:
    """argparse type: one base seed or a comma list of distinct ones."""
    try:
        seeds = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected an integer or a comma list of distinct integers, got {text!r}")
    return seeds


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``vidplan eval closed-loop``."""
    from vidplan_server.evaluation.closed_loop.names import AGENT_NAMES, DEFAULT_SEED, SPLITS

    p.add_argument(
        "--split",
        type=_names(SPLITS),
        action="append",
        required=True,
        metavar="SPLIT",
        help="task split: val (training objects and colours, 1-3 distractors) or ood (novel target "
        "objects or colours, 4-6 distractors); repeat or give a comma list for both",
    )
    p.add_argument(
        "--episodes",
        type=positive_int,
        required=True,
        metavar="N",
        help="episodes per split and agent (indices 0..N-1)",
    )
    p.add_argument(
        "--agent",
        type=_names(AGENT_NAMES),
        action="append",
        required=True,
        metavar="NAME",
        help="who drives the robot: expert (the scripted expert of the recordings), policy (the bundle's "
        "policy alone), goal-policy (the bundle's goal policy alone, which reads the instruction's semantic "
        "map), vidplan (planning on top of the policy), vidplan-no-uq (planning without the "
        "uncertainty weighting), vidplan-basis (planning with the Jacobian basis proposals only); repeat "
        "or give a comma list",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder for episodes, videos and the report (created; re-run with the same options to resume)",
    )
    p.add_argument(
        "--seed",
        type=seed_list,
        default=[DEFAULT_SEED],
        metavar="S",
        help=f"base seed of the scenes; the same for all agents (default {DEFAULT_SEED}, apart from the "
        "recorded datasets' seeds). A comma list runs each base seed in OUT/seed_<S> and reports them pooled: "
        "more, and other, scenes for the same command",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        metavar="W",
        help="parallel episode processes, each with its own simulator and one torch thread "
        f"(default 1; this machine has {os.cpu_count()} cores)",
    )
    p.add_argument(
        "--open-loop-horizon",
        type=positive_int,
        default=8,
        metavar="K",
        help="rows of a chunk executed before the agent is asked again (default 8, as DROID's pi0.5 "
        "client; fewer if the chunk is shorter)",
    )
    p.add_argument(
        "--max-steps",
        type=positive_int,
        default=240,
        metavar="N",
        help="control steps per episode at most, at 15 Hz (default 240, i.e. 16 s)",
    )
    p.add_argument(
        "--history-steps",
        type=positive_int,
        default=16,
        metavar="N",
        help="recent observations handed to the agent, oldest first (default 16)",
    )
    p.add_argument(
        "--success-hold-steps",
        type=positive_int,
        default=8,
        metavar="N",
        help="the episode ends early once the task has been done for N consecutive steps (default 8)",
    )
    p.add_argument(
        "--resolution",
        default="64x64",
        metavar="HxW",
        help="rendered size of each camera view (default 64x64, what the bundled models see)",
    )
    p.add_argument(
        "--ckpt",
        type=Path,
        default=None,
        metavar="DIR",
        help="checkpoint folder of the model-based agents (default: the bundled checkpoint)",
    )
    p.add_argument("--device", default="cpu", help="torch device of the model-based agents (default cpu)")
    p.add_argument(
        "--videos",
        type=non_negative_int,
        default=2,
        metavar="K",
        help="mp4s of the first K episodes per split and agent (default 2; 0: none)",
    )
    p.add_argument(
        "--video-scale",
        type=positive_int,
        default=3,
        metavar="S",
        help="each view enlarged S times in the videos (default 3)",
    )
    p.add_argument(
        "--realtime",
        action="store_true",
        help="drive the robot through the real robot client (RobotLoop, 15 Hz, plans in the background) "
        "against a planning server, as `vidplan demo` does, so planning latency costs simulated time; "
        "runs agent vidplan (the server's default planning), recorded as vidplan@realtime "
        "(vidplan@realtime-xF at --slowdown F); one episode at a time",
    )
    p.add_argument(
        "--server",
        default=None,
        metavar="ADDR",
        help="--realtime: host:port of a running `vidplan serve` (default: start one here with --ckpt "
        "and --device, on free localhost ports, and stop it at the end)",
    )
    p.add_argument(
        "--slowdown",
        type=positive_float,
        default=1.0,
        metavar="F",
        help="--realtime: wall seconds per simulated second; 1 = real time, the robot sees the server's "
        "true latency; 5 makes the server look 5 times faster (default 1)",
    )
    p.add_argument(
        "--plan-timeout",
        type=positive_float,
        default=1.0,
        metavar="SECONDS",
        help="--realtime: deadline of one plan in simulated seconds (default 1.0)",
    )
    p.add_argument(
        "--token",
        default=None,
        help="--realtime: bearer token of the server (default: the VIDPLAN_TOKEN environment variable)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Handler of ``vidplan eval closed-loop``."""
    from vidplan_server.argtypes import CliError
    from vidplan_server.evaluation.closed_loop.report import format_table, write_report
    from vidplan_server.evaluation.closed_loop.runner import (
        ClosedLoopConfig,
        ClosedLoopError,
        load_all_episodes,
        run_closed_loop_seeds,
    )
    from vidplan_server.sim.record import parse_resolution

    splits = list(dict.fromkeys(s for group in args.split for s in group))
    agents = list(dict.fromkeys(a for group in args.agent for a in group))
    if args.ckpt is not None and not args.ckpt.is_dir():
        raise CliError(f"--ckpt {args.ckpt}: checkpoint folder does not exist")
    if args.out.exists() and not args.out.is_dir():
        raise CliError(f"--out {args.out}: exists and is not a folder")
    try:
        resolution = parse_resolution(args.resolution)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    try:
        config = ClosedLoopConfig(
            seed=args.seed[0],
            open_loop_horizon=args.open_loop_horizon,
            max_steps=args.max_steps,
            history_steps=args.history_steps,
            success_hold_steps=args.success_hold_steps,
            resolution=resolution,
            ckpt=str(args.ckpt) if args.ckpt is not None else None,
            device=args.device,
            videos=args.videos,
            video_scale=args.video_scale,
        )
        if args.realtime:
            from vidplan_server.evaluation.closed_loop.realtime import RealtimeConfig, run_realtime

            if len(args.seed) > 1:
                raise CliError("--seed: --realtime runs one base seed at a time")
            if args.workers > 1:
                raise CliError(
                    "--workers: --realtime runs one episode at a time (parallel episodes would share the "
                    "server and distort its latency)"
                )
            token = args.token if args.token is not None else (os.environ.get("VIDPLAN_TOKEN") or None)
            rt = RealtimeConfig(
                server=args.server, slowdown=args.slowdown, plan_timeout_s=args.plan_timeout, token=token
            )
            run_realtime(args.out, splits, {a: args.episodes for a in agents}, config, rt, progress=not args.quiet)
        else:
            for name in ("server", "token"):
                if getattr(args, name) is not None:
                    raise CliError(f"--{name} is only used with --realtime")
            run_closed_loop_seeds(
                args.out,
                splits,
                {a: args.episodes for a in agents},
                args.seed,
                config,
                workers=args.workers,
                progress=not args.quiet,
            )
        summary = write_report(args.out, load_all_episodes(args.out))
    except ClosedLoopError as exc:
        raise CliError(str(exc)) from None
    print(format_table(summary))
    print(f"wrote {args.out / 'closed_loop.json'}, {args.out / 'closed_loop.md'} and {args.out / 'closed_loop.png'}")
    return 0
