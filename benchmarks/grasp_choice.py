"""Near a grasp, does the planner's choice among the policy's own samples differ from a random sample?

    python benchmarks/grasp_choice.py --out outputs/bench/grasp_choice.json [--split val] [--episodes 10]
                                      [--probes 5] [--ckpt DIR] [--seed 1000]

The scripted expert drives each closed-loop scene (``--seed``, the benchmark's seeds) towards its grasp. At the
states where the hand is over the instructed object (within 4 cm horizontally, 12 cm above it, gripper open;
every 3rd step, at most ``--probes`` per episode) the planner plans at its defaults (the policy's samples, no
basis when the policy fills N) and the script compares the winner with the samples it chose from (the same seeded
draw, ``Planner.policy_chunks``): whether it closes the gripper within the executed 8 rows, where its row-8
position ends, and how far apart the proposals' scores are. A winner no different from the average sample, with
scores that hardly differ, means the selection is a random draw of the policy decided by the model's noise. Prints
a table and writes ``{"probes", "winner_closes", "samples_close", "winner_end_z_minus_mean_m",
"winner_end_dist_minus_mean_m", "score_spread", "setup"}`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vidplan_server.evaluation.closed_loop.planning_agents import request_from_history
from vidplan_server.evaluation.closed_loop.runner import DEFAULT_SEED
from vidplan_server.evaluation.score_noise import expert_states, planner_with_policy
from vidplan_server.models.checkpoint import CheckpointError
from vidplan_server.planning.planner import Planner
from vidplan_server.planning.types import PlanOptions
from vidplan_server.sim.robot_env import SimEnvConfig, SimRobotEnv

HISTORY, HORIZON, MAX_STEPS = 16, 8, 200


def _near_grasp(obs: dict, target_xyz: np.ndarray) -> bool:
    p = np.asarray(obs["robot_state"]["cartesian_position"][:3])
    open_hand = obs["robot_state"]["gripper_position"] < 0.1
    return bool(np.linalg.norm(target_xyz[:2] - p[:2]) < 0.04 and open_hand and p[2] - target_xyz[2] < 0.12)


def probe(planner: Planner, env: SimRobotEnv, split: str, episodes: int, probes: int, seed: int) -> list[dict]:
    rows, done = [], {}
    states = expert_states(env, split, episodes, seed, every=3, history_steps=HISTORY, max_steps=MAX_STEPS)
    for st in tqdm(states, desc="grasp choice", unit="state"):
        obs, target = st.history[-1], st.target_xyz
        if done.get(st.episode, 0) >= probes or not _near_grasp(obs, target):
            continue
        req = request_from_history(
            st.history, st.instruction, planner.history_len, planner.frame_stride, PlanOptions(seed=st.seed + st.step)
        )
        result = planner.plan(req)
        samples = planner.policy_chunks(req, len(result.proposal_kinds))
        closes = samples[:, :HORIZON, 6].max(1) > 0.5
        end = samples[:, HORIZON - 1, :3]
        dist = np.linalg.norm(end - target, axis=1)
        w = result.winner
        rows.append(
            {
                "winner_closes": float(closes[w]),
                "samples_close": float(closes.mean()),
                "winner_end_z_minus_mean_m": float(end[w, 2] - end[:, 2].mean()),
                "winner_end_dist_minus_mean_m": float(dist[w] - dist.mean()),
                "score_spread": float(np.ptp(result.proposal_scores)),
            }
        )
        done[st.episode] = done.get(st.episode, 0) + 1
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="JSON result file")
    p.add_argument("--split", default="val", choices=("val", "ood"), help="scenes (default val)")
    p.add_argument("--episodes", type=int, default=10, help="scenes probed (default 10)")
    p.add_argument("--probes", type=int, default=5, help="plans per scene at most (default 5)")
    p.add_argument("--ckpt", type=Path, default=None, help="checkpoint bundle with a policy (default: the bundled one)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"base seed of the scenes (default {DEFAULT_SEED})")
    args = p.parse_args()
    if args.episodes < 1 or args.probes < 1:
        p.error("--episodes and --probes must be >= 1")
    try:
        planner = planner_with_policy(args.ckpt)
    except CheckpointError as exc:
        p.error(f"--ckpt: {exc}")
    env = SimRobotEnv(SimEnvConfig(split=args.split))
    t0 = time.perf_counter()
    try:
        rows = probe(planner, env, args.split, args.episodes, args.probes, args.seed)
    finally:
        env.close()
    if not rows:
        p.exit(1, "grasp_choice: no state near a grasp was reached\n")
    keys = list(rows[0])
    out = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys}
    out["probes"] = len(rows)
    out["setup"] = {"split": args.split, "episodes": args.episodes, "seed": args.seed, "ckpt": str(args.ckpt or "")}
    print("| measure (mean over probes) | value |\n| --- | --- |")
    for k in ["probes", *keys]:
        print(f"| {k} | {out[k]} |")
    print(f"({time.perf_counter() - t0:.0f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
