"""Measure the simulated DROID scene: expert success and recording throughput.

    python benchmarks/sim_record.py --out outputs/bench/sim_record.json [--nominal 100] [--ood 100]

Prints a table and writes JSON with: expert success rate over nominal episodes (no failure modes)
of the train and ood splits, recording throughput in episodes per minute at 64x64 and 180x320
with --workers processes, and the dataset size per episode on disk.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vidplan_server.sim.episode import EpisodeConfig, episode_seed, run_episode
from vidplan_server.sim.record import record
from vidplan_server.sim.scene import SimScene


def expert_success(split: str, n: int, seed: int) -> dict:
    scene = SimScene()
    config = EpisodeConfig(split=split, imperfect_fraction=0.0)
    outcomes, kinds = [], []
    for i in tqdm(range(n), desc=f"expert {split}"):
        ep = run_episode(episode_seed(seed, split, i), config, scene=scene, render=False)
        outcomes.append(ep.success)
        kinds.append(ep.metadata["task_kind"])
    scene.close()
    o, k = np.array(outcomes), np.array(kinds)
    return {
        "episodes": n,
        "success_rate": float(o.mean()),
        "place_success": float(o[k == "place"].mean()) if (k == "place").any() else None,
        "pick_success": float(o[k == "pick"].mean()) if (k == "pick").any() else None,
    }


def throughput(resolution: tuple[int, int], n: int, workers: int, seed: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="vidplan_bench_"))
    try:
        config = EpisodeConfig(resolution=resolution)
        t0 = time.perf_counter()
        summary = record(root / "ds", n, seed=seed, config=config, workers=workers, progress=True)
        seconds = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in (root / "ds").rglob("*") if f.is_file())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "resolution": f"{resolution[0]}x{resolution[1]}",
        "episodes": n,
        "workers": workers,
        "seconds": seconds,
        "episodes_per_minute": 60.0 * n / seconds,
        "mb_per_episode": size / n / 1e6,
        "success_rate": summary.successes / n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="JSON result file")
    ap.add_argument("--nominal", type=int, default=100, help="nominal train episodes for expert success")
    ap.add_argument("--ood", type=int, default=100, help="nominal ood episodes for expert success")
    ap.add_argument("--throughput-episodes", type=int, default=12, help="episodes per throughput run")
    ap.add_argument("--workers", type=int, default=2, help="recording processes for throughput")
    ap.add_argument("--seed", type=int, default=123)
    args = ap.parse_args()

    result = {
        "expert_train": expert_success("train", args.nominal, args.seed),
        "expert_ood": expert_success("ood", args.ood, args.seed),
        "throughput": [
            throughput(r, args.throughput_episodes, args.workers, args.seed) for r in ((64, 64), (180, 320))
        ],
    }
    print()
    print(f"{'measure':32s} {'value':>10s}")
    print(f"{'expert success, train nominal':32s} {result['expert_train']['success_rate']:10.3f}  (n={args.nominal})")
    print(f"{'expert success, ood nominal':32s} {result['expert_ood']['success_rate']:10.3f}  (n={args.ood})")
    for t in result["throughput"]:
        print(f"{'episodes/min @ ' + t['resolution']:32s} {t['episodes_per_minute']:10.1f}  ({t['workers']} workers)")
        print(f"{'MB/episode @ ' + t['resolution']:32s} {t['mb_per_episode']:10.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
