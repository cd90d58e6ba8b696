"""Is the planner's choice among the policy's samples the actions' doing, or the rollout noise's?

    python benchmarks/score_noise.py --out outputs/bench/score_noise.json [--split val,ood] [--episodes 6]
                                     [--draws 4] [--every 8] [--margins 0,0.01] [--ckpt DIR] [--seed 1000]

The scripted expert drives ``--episodes`` scenes per split (the closed-loop benchmark's seeds); at every
``--every``-th step the planner's default proposals (the policy's samples) are rolled out and scored under
``--draws`` shared noise draws (``vidplan_server.evaluation.score_noise``). Prints a table per split: the noise of one
score comparison, the proposals' real spread, how often a redraw keeps the winner, the score's Spearman with
closeness to the instructed object, whether it ranks the samples bound for the instructed object above those
bound for another (target AUC, where they disagree), and per ``--margins`` value (``PlannerConfig.keep_margin``)
how often the planner leaves the policy's own sample and whether that moved the hand closer. Writes
``{split: {...}}`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from tqdm import tqdm

from vidplan_server.evaluation.closed_loop.planning_agents import request_from_history
from vidplan_server.evaluation.closed_loop.runner import DEFAULT_SEED
from vidplan_server.evaluation.score_noise import expert_states, planner_with_policy, score_draws, summarize
from vidplan_server.models.checkpoint import CheckpointError
from vidplan_server.planning.types import PlanOptions
from vidplan_server.sim.robot_env import SimEnvConfig, SimRobotEnv


def _splits(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names or any(n not in ("val", "ood") for n in names):
        raise argparse.ArgumentTypeError(f"expected a comma list of val, ood; got {text!r}")
    return names


def _margins(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        values = ()
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected a comma list of margins >= 0, got {text!r}")
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="JSON result file")
    p.add_argument("--split", type=_splits, default=["val", "ood"], help="comma list of val, ood (default both)")
    p.add_argument("--episodes", type=_positive, default=6, help="expert-driven scenes per split (default 6)")
    p.add_argument("--draws", type=int, default=4, help="shared noise draws per state, >= 2 (default 4)")
    p.add_argument("--every", type=_positive, default=8, help="probe every N-th control step (default 8)")
    p.add_argument("--margins", type=_margins, default=(0.0, 0.01), help="keep margins compared (default 0,0.01)")
    p.add_argument("--ckpt", type=Path, default=None, help="checkpoint bundle with a policy (default: the bundled one)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"base seed of the scenes (default {DEFAULT_SEED})")
    p.add_argument("--max-steps", type=_positive, default=200, help="control steps per scene at most (default 200)")
    args = p.parse_args()
    if args.draws < 2:
        p.error("--draws must be >= 2 (the noise is the spread between draws)")
    try:
        planner = planner_with_policy(args.ckpt)
    except CheckpointError as exc:
        p.error(f"--ckpt: {exc}")
    out, t0 = {}, time.perf_counter()
    for split in args.split:
        env = SimRobotEnv(SimEnvConfig(split=split))
        states = []
        try:
            probes = expert_states(env, split, args.episodes, args.seed, args.every, max_steps=args.max_steps)
            for st in tqdm(probes, desc=f"score noise {split}", unit="state"):
                req = request_from_history(
                    st.history,
                    st.instruction,
                    planner.history_len,
                    planner.frame_stride,
                    PlanOptions(seed=st.seed + st.step),
                )
                states.append(score_draws(planner, req, st.target_xyz, args.draws, objects_xyz=st.objects_xyz))
        finally:
            env.close()
        out[split] = summarize(states, args.margins)
    cols = "states (approach) | paired noise | spread | argmax agreement | Spearman closeness | target AUC (n)"
    print(f"| split | {cols} |", end="")
    print("".join(f" m={m:g}: switch rate, closer (m, n) |" for m in args.margins))
    print("| --- " * (7 + len(args.margins)) + "|")
    for split, r in out.items():
        cells = [
            f"{r['states']} ({r['approach_states']})",
            f"{r['paired_noise']:.4f}",
            f"{r['spread']:.4f}",
            f"{r['argmax_agreement']:.2f}",
            f"{r['spearman_closeness']:+.2f}",
            f"{r['target_auc']:.2f} ({r['mixed_heading_states']})",
        ]
        for m in args.margins:
            g = r["margins"][f"{m:g}"]
            cells.append(f"{g['switch_rate']:.2f}, {g['switch_closer_m']:+.3f} ({g['approach_switches']})")
        print(f"| {split} | " + " | ".join(cells) + " |")
    print(f"({time.perf_counter() - t0:.0f} s)")
    out["setup"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
