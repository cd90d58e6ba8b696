"""How far the target locator's point is from the instructed object, on recorded episodes.

    python benchmarks/locator_error.py --out outputs/bench/locator_error.json
        [--data outputs/data/sim_val,outputs/data/sim_ood] [--ckpt DIR ...] [--episodes 25]

The planner's progress term (``planning/objective.py``) is the distance from each proposal's commanded position to
where the bundle's ``locator`` puts the object the instruction names, so this is the error every plan inherits.
For each bundle (``--ckpt``, repeatable: the bundled checkpoint by default) and dataset, the locator reads the frames
at steps 4, 16, T/3 and T/2 of the first ``--episodes`` episodes through the planner's own path
(:meth:`~vidplan_server.planning.planner.Planner.locate_target`), and the simulator's ground truth scores it:

- ``xy_error_m`` median / mean / 80th percentile: the located point to the instructed object, on the table plane;
- ``nearest_rate``: how often the point is nearer the instructed object than every other object of the scene
  (below it, the progress term pulls toward another object);
- the same two figures by the hand's distance to the object (far / mid / near), because the first plans of an
  episode, with the arm far away, decide where it goes.

Prints a table; writes ``{ckpt: {dataset: {...}}}`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vidplan_server.data.reader import EpisodeDataset
from vidplan_server.planning.offline import request_from_episode
from vidplan_server.planning.planner import Planner
from vidplan_server.planning.types import PlanOptions

HAND_BANDS = ((0.0, 0.05, "near"), (0.05, 0.15, "mid"), (0.15, 10.0, "far"))  # m, hand to instructed object


def _summary(errors: list[float], nearest: list[bool]) -> dict:
    e = np.asarray(errors, dtype=np.float64)
    if not len(e):
        return {"frames": 0}
    return {
        "frames": len(e),
        "xy_error_median_m": float(np.median(e)),
        "xy_error_mean_m": float(e.mean()),
        "xy_error_p80_m": float(np.percentile(e, 80)),
        "nearest_rate": float(np.mean(nearest)),
    }


def measure(planner: Planner, data: Path, episodes: int, progress: bool = True) -> dict:
    dataset = EpisodeDataset(data)
    rows = []  # (xy error, nearest, hand distance)
    for k in tqdm(range(min(episodes, len(dataset))), desc=data.name, disable=not progress, leave=False):
        ep = dataset.load_episode(k, images=True, ground_truth=True)
        gt = ep.ground_truth
        if gt is None:
            raise SystemExit(f"{data}: episode {k} has no simulator ground truth (record it with `vidplan sim record`)")
        for t in sorted({4, 16, len(ep) // 3, len(ep) // 2}):
            if t >= len(ep):
                continue
            req = request_from_episode(ep, t, planner.history_len, planner.frame_stride, PlanOptions())
            history, text = planner.encode_history(req.history), planner.text_embedding(req.instruction)
            point = planner.locate_target(history, text, req.history[-1])
            objects = np.asarray(gt.object_poses[t, :, :2], dtype=np.float64)
            err = np.linalg.norm(objects - point[:2], axis=1)
            hand = float(np.linalg.norm(ep.cartesian_position[t, :2] - objects[gt.target_index]))
            rows.append((float(err[gt.target_index]), bool(np.argmin(err) == gt.target_index), hand))
    out = _summary([r[0] for r in rows], [r[1] for r in rows])
    for lo, hi, name in HAND_BANDS:
        band = [r for r in rows if lo <= r[2] < hi]
        out[f"hand_{name}"] = _summary([r[0] for r in band], [r[1] for r in band])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    ap.add_argument(
        "--data",
        default="outputs/data/sim_val,outputs/data/sim_ood",
        help="comma list of recorded dataset folders with simulator ground truth (default: the val and ood sets)",
    )
    ap.add_argument(
        "--ckpt", type=Path, action="append", default=None, help="bundle to measure (repeatable; default: bundled)"
    )
    ap.add_argument("--episodes", type=int, default=25, help="episodes per dataset, 4 frames each (default 25)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    folders = [Path(d.strip()) for d in args.data.split(",") if d.strip()]
    for folder in folders:
        if not folder.is_dir():
            ap.error(f"--data {folder}: dataset folder does not exist")
    if args.episodes < 1:
        ap.error(f"--episodes must be >= 1, got {args.episodes}")
    results: dict = {}
    t0 = time.perf_counter()
    for ckpt in args.ckpt or [None]:
        planner = Planner.load(ckpt)
        if planner.locator is None:
            ap.error(f"--ckpt {ckpt or 'bundled'}: the bundle has no locator module")
        name = str(ckpt or "bundled")
        results[name] = {f.name: measure(planner, f, args.episodes, not args.quiet) for f in folders}
    print("| bundle | data | frames | xy error median / mean / p80 (cm) | nearest | far: median, nearest | near: ... |")
    print("|---|---|---:|---|---:|---|---|")
    for name, per in results.items():
        for data, r in per.items():
            far, near = r["hand_far"], r["hand_near"]

            def cell(s: dict) -> str:
                return f"{100 * s['xy_error_median_m']:.1f} cm, {s['nearest_rate']:.0%}" if s["frames"] else "-"

            print(
                f"| {name} | {data} | {r['frames']} | {100 * r['xy_error_median_m']:.1f} / "
                f"{100 * r['xy_error_mean_m']:.1f} / {100 * r['xy_error_p80_m']:.1f} | {r['nearest_rate']:.0%} | "
                f"{cell(far)} (n={far['frames']}) | {cell(near)} (n={near['frames']}) |"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results, "seconds": time.perf_counter() - t0}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
