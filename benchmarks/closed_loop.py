"""Closed-loop success on val and ood: the policy alone, VidPlan on top of it, the ablations and the expert.

    python benchmarks/closed_loop.py --out outputs/bench/closed_loop.json [--workdir outputs/bench/closed_loop]
                                     [--workers 2] [--episodes 50] [--reference-episodes 20] [--agents ...]

Runs ``vidplan eval closed-loop``'s runner on both splits: ``--episodes`` episodes (default 50) per split
for policy, goal-policy, vidplan and vidplan-no-uq, ``--reference-episodes`` (default 20) for expert and
vidplan-basis, all on the same seeds. Resumable: episodes already in ``--workdir`` are kept, so a run stopped at
any point (or at a session's end) continues where it stopped with the same command. ``--seed 1000,2000,3000``
runs every base seed in ``WORKDIR/seed_<S>`` and reports them pooled (150 episodes per split and agent at the
default ``--episodes``): a figure that held on one seed's scenes is checked on others. Prints the table and writes
``--out`` as ``{"val": {agent: {"success", "ci_low", "ci_high", "instruction_following", "episodes",
"paired_diff_to_policy", ...}}, "ood": {...}}`` (``report.summarize``), plus the report, bar chart and videos in
the workdir.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from vidplan_server.evaluation.closed_loop.agents import AGENT_NAMES
from vidplan_server.evaluation.closed_loop.cli import seed_list
from vidplan_server.evaluation.closed_loop.report import format_table, summarize, write_report
from vidplan_server.evaluation.closed_loop.runner import (
    DEFAULT_SEED,
    SPLITS,
    ClosedLoopConfig,
    ClosedLoopError,
    run_closed_loop_seeds,
)

MAIN_AGENTS = (
    "policy",
    "goal-policy",
    "vidplan",
    "vidplan-no-uq",
)  # the targets, and what the goal policy adds
REFERENCE_AGENTS = ("expert", "vidplan-basis")


def _agents(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in AGENT_NAMES]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(AGENT_NAMES)}, got {text!r}")
    return names


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="JSON result file")
    ap.add_argument(
        "--workdir",
        type=Path,
        default=Path("outputs/bench/closed_loop"),
        help="episodes, videos and report; reuse it to resume (default outputs/bench/closed_loop)",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=max(1, min(2, os.cpu_count() or 1)),
        help="parallel episode processes (default: cores, at most 2)",
    )
    ap.add_argument(
        "--episodes", type=int, default=50, help=f"episodes per split for {', '.join(MAIN_AGENTS)} (default 50)"
    )
    ap.add_argument(
        "--reference-episodes",
        type=int,
        default=20,
        help=f"episodes per split for {', '.join(REFERENCE_AGENTS)} (default 20)",
    )
    ap.add_argument(
        "--agents",
        type=_agents,
        default=list(AGENT_NAMES),
        help=f"comma list of agents to run (default all: {','.join(AGENT_NAMES)})",
    )
    ap.add_argument("--splits", default="val,ood", help="comma list of splits (default val,ood)")
    ap.add_argument(
        "--seed",
        type=seed_list,
        default=[DEFAULT_SEED],
        help=f"base seed of the scenes (default {DEFAULT_SEED}); a comma list runs each in WORKDIR/seed_<S>, "
        "prints each seed's table, and reports them pooled",
    )
    ap.add_argument("--ckpt", type=Path, default=None, help="checkpoint of the model-based agents (default bundled)")
    ap.add_argument("--device", default="cpu", help="torch device of the model-based agents (default cpu)")
    ap.add_argument("--videos", type=int, default=2, help="mp4s of the first K episodes per split and agent")
    args = ap.parse_args()

    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    if not splits or any(s not in SPLITS for s in splits):
        ap.error(f"--splits: expected a comma list of {', '.join(SPLITS)}, got {args.splits!r}")
    if args.episodes < 1 or args.reference_episodes < 1 or args.workers < 1:
        ap.error("--episodes, --reference-episodes and --workers must be >= 1")
    counts = {a: (args.episodes if a in MAIN_AGENTS else args.reference_episodes) for a in args.agents}
    config = ClosedLoopConfig(
        seed=args.seed[0], ckpt=str(args.ckpt) if args.ckpt else None, device=args.device, videos=args.videos
    )
    t0 = time.perf_counter()
    try:
        records = run_closed_loop_seeds(args.workdir, splits, counts, args.seed, config, workers=args.workers)
    except ClosedLoopError as exc:
        print(f"closed_loop.py: error: {exc}", file=sys.stderr)
        return 2
    summary = summarize(records)
    write_report(args.workdir, records)
    if len(args.seed) > 1:
        for seed in args.seed:
            mine = [r for r in records if r.get("options", {}).get("seed") == seed]
            print(f"\nbase seed {seed}:\n{format_table(summarize(mine))}")
        print(f"\npooled over base seeds {','.join(map(str, args.seed))}:")
    print()
    print(format_table(summary))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"\n{len(records)} episodes ({time.perf_counter() - t0:.0f} s this run); wrote {args.out} and "
        f"{args.workdir / 'closed_loop.md'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
