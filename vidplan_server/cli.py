"""`vidplan` command line: one entry point, one subcommand group per part of the product.

    vidplan sim record   --episodes N --out DIR [--seed S] [--split train|val|ood] [--resolution HxW] [--workers W]
    vidplan sim preview  DIR --episode K --out sheet.png
    vidplan data info    DIR [--json]

Every command checks its arguments before starting work and exits with status 2 and a message
naming the bad option or file on bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


class CliError(Exception):
    """Bad input on the command line; printed as ``vidplan: error: ...`` with exit status 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value}")
    return value


# ---------------------------------------------------------------------------------------- sim
def _cmd_sim_record(args: argparse.Namespace) -> int:
    from vidplan_server.data.sim.episode import EpisodeConfig
    from vidplan_server.data.sim.record import parse_resolution, record

    try:
        resolution = parse_resolution(args.resolution)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    config = EpisodeConfig(split=args.split, resolution=resolution, imperfect_fraction=args.imperfect_fraction)
    summary = record(
        args.out, args.episodes, seed=args.seed, config=config, workers=args.workers, progress=not args.quiet
    )
    print(
        f"{args.out}: recorded {summary.recorded} episode(s), {summary.skipped} already present; "
        f"success {summary.successes}/{summary.recorded}; {summary.episodes_per_minute:.1f} episodes/min"
    )
    return 0


def _cmd_sim_preview(args: argparse.Namespace) -> int:
    from vidplan_server.data.preview import write_preview
    from vidplan_server.data.reader import EpisodeDataset

    if args.out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise CliError(f"--out {args.out}: the contact sheet must be a .png or .jpg file")
    ds = EpisodeDataset(args.dataset)
    if not 0 <= args.episode < len(ds):
        raise CliError(f"--episode {args.episode}: {args.dataset} holds episodes 0..{len(ds) - 1}")
    episode = ds.load_episode(args.episode)
    try:
        video = write_preview(episode, args.out, title=f"episode {args.episode}: ")
    except OSError as exc:
        raise CliError(f"--out {args.out}: cannot write ({exc})") from exc
    print(f"wrote {args.out} and {video}")
    return 0


# ---------------------------------------------------------------------------------------- data
def _cmd_data_info(args: argparse.Namespace) -> int:
    from vidplan_server.data.info import dataset_summary, format_summary
    from vidplan_server.data.reader import EpisodeDataset

    ds = EpisodeDataset(args.dataset)
    summary = dataset_summary(ds)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary, ds.features))
    return 0


# ---------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vidplan",
        description="VidPlan: inference-time planning with an action-conditioned video world model.",
    )
    groups = parser.add_subparsers(dest="group", required=True, metavar="{sim,data}")

    sim = groups.add_parser("sim", help="simulated DROID scene: record and preview episodes")
    sim_cmds = sim.add_subparsers(dest="command", required=True, metavar="{record,preview}")

    rec = sim_cmds.add_parser(
        "record",
        help="record scripted-expert episodes into a LeRobot v3.0 dataset",
        description="Record episodes of the simulated DROID scene (PyBullet) with the scripted expert "
        "into a LeRobot v3.0 dataset. Resumable: re-running with the same arguments records only the "
        "missing episodes.",
    )
    rec.add_argument(
        "--episodes", type=_positive_int, required=True, help="total number of episodes the dataset should hold"
    )
    rec.add_argument("--out", type=Path, required=True, help="dataset folder (created, or resumed)")
    rec.add_argument("--seed", type=int, default=0, help="base seed; episode i uses a seed derived from it (default 0)")
    rec.add_argument(
        "--split",
        choices=("train", "val", "ood"),
        default="train",
        help="train / val: training objects and colours, 1-3 distractors; ood: novel objects or "
        "colours as targets and 4-6 distractors (default train)",
    )
    rec.add_argument(
        "--resolution",
        default="64x64",
        help="per-view HxW, e.g. 64x64 (training default) or 180x320 (DROID) (default 64x64)",
    )
    rec.add_argument(
        "--workers",
        type=_positive_int,
        default=max(1, min(4, os.cpu_count() or 1)),
        help="parallel simulator processes (default: number of cores, at most 4)",
    )
    rec.add_argument(
        "--imperfect-fraction",
        type=_fraction,
        default=0.2,
        help="share of episodes run with a failure mode (wrong target, drop, miss, timeout) (default 0.2)",
    )
    rec.add_argument("--quiet", action="store_true", help="no progress bar")
    rec.set_defaults(func=_cmd_sim_record)

    prev = sim_cmds.add_parser(
        "preview",
        help="contact sheet PNG + mp4 of one episode",
        description="Render a contact sheet (three views over time, instruction, success) of one episode "
        "to --out, and the episode as an mp4 beside it (same name, .mp4).",
    )
    prev.add_argument("dataset", type=Path, help="dataset folder")
    prev.add_argument("--episode", type=int, default=0, help="episode index (default 0)")
    prev.add_argument("--out", type=Path, required=True, help="output PNG path; the mp4 is written beside it")
    prev.set_defaults(func=_cmd_sim_preview)

    data = groups.add_parser("data", help="inspect datasets (VidPlan recordings or DROID ports)")
    data_cmds = data.add_subparsers(dest="command", required=True, metavar="{info}")
    info = data_cmds.add_parser(
        "info",
        help="schema, counts, success rate and action statistics",
        description="Print the schema, episode and frame counts, success rate and per-dimension action "
        "statistics of a LeRobot dataset (v3.0 or v2.x; VidPlan recordings or DROID ports).",
    )
    info.add_argument("dataset", type=Path, help="dataset folder")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(func=_cmd_data_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    from vidplan_server.data.errors import DatasetError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CliError, DatasetError) as exc:
        print(f"vidplan: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `vidplan data info DIR | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("vidplan: interrupted; committed episodes are kept, re-run to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
