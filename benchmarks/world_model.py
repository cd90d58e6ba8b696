"""World-model speed and quality: EDM Heun sampler vs the k-step flow map vs copy-the-last-frame.

    python benchmarks/world_model.py --data outputs/data/sim_val --out outputs/bench/world_model.json \
        [--ckpt DIR] [--windows 48] [--candidates 6] [--heun-steps 18] [--flow-steps 1 2 4] [--device cpu]

The checkpoint defaults to the bundled one. Prints a table and writes
{"methods": {"copy_last": {...}, "diffusion": {...}, "flow_1": {...}, "flow_2": {...}, "flow_4": {...}},
 "vs_diffusion": {...}, "timing": {...}, "setup": {...}}; each method has nfe, ms_per_rollout, psnr, ssim,
psnr_moving. Definitions: vidplan_server/evaluation/world_model_quality.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from vidplan_server.evaluation.world_model_quality import BenchConfig, format_table, run_benchmark
from vidplan_server.models.world_model import WorldModel


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", type=Path, default=None, help="checkpoint bundle (default: the bundled one)")
    p.add_argument("--data", type=Path, required=True, help="held-out episodes (e.g. vidplan sim record --split val)")
    p.add_argument("--out", type=Path, required=True, help="JSON result file")
    p.add_argument("--windows", type=int, default=48, help="windows scored for quality (default 48)")
    p.add_argument("--candidates", type=int, default=6, help="action chunks per timed rollout (default 6)")
    p.add_argument("--heun-steps", type=int, default=18, help="EDM Heun levels (2n-1 evaluations; default 18)")
    p.add_argument("--flow-steps", type=int, nargs="+", default=[1, 2, 4], help="flow-map step counts (default 1 2 4)")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions per method, median reported (default 5)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the start noise and the perturbed candidates")
    args = p.parse_args()

    model = WorldModel.load(args.ckpt, device=torch.device(args.device))
    cfg = BenchConfig(
        windows=args.windows,
        candidates=args.candidates,
        heun_steps=args.heun_steps,
        flow_steps=tuple(args.flow_steps),
        repeats=args.repeats,
        seed=args.seed,
    )
    result = run_benchmark(model, args.data, cfg)
    result["setup"]["ckpt"] = str(args.ckpt or "bundled")
    print(format_table(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
