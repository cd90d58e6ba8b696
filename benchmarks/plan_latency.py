"""Planner latency: whole plan and each stage, for N proposals, k flow steps and refinement iterations.

    python benchmarks/plan_latency.py --out outputs/bench/plan_latency.json [--repeats 10] [--ckpt DIR]

For every (device, N, k, iters) in the grid it plans ``--repeats`` times (after warm-up runs) on a real
observation of the simulated scene and reports the median and p95 of the whole plan and the median of every
stage. Beside it, the model's own cost: one flow-map network evaluation on the N-proposal batch (fwd(N)),
one at batch 1 (fwd(1)), and one forward + backward at batch 1 (fwd_bwd(1)). Refinement evaluates iteration
0 and every iterate (iters + 1 forwards) and steps iters times (iters backwards), so ``model_ms``, what the
plan would cost if it were nothing but network evaluations, is

    model_ms = k * fwd(N) + [iters > 0] * k * ((iters + 1) * fwd(1) + iters * (fwd_bwd(1) - fwd(1)))

and ``planner_overhead`` = median plan / model_ms: how much proposing, scoring (UQ head, decoding, semantic
reward), the value head, IK and the safety checks add around the world model. JSON rows carry ``device``,
``n``, ``k``, ``iters``, ``median_ms``, ``p95_ms``, ``stages_ms`` and these model figures; ``score_over_rollout``
is the median score stage over the median rollout stage.

Absolute times differ about 3x between machines of one kind (and with the load of a shared one), so the script
first prints a reference figure of the machine: the GFLOP/s of a fixed float32 matmul (1024 x 1024, on the
benchmark's threads; ``meta.reference_gflops`` in the JSON), measured again at the end. Compare absolute times
from two machines through it; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vidplan_server.planning.call import STAGES
from vidplan_server.planning.offline import request_from_episode
from vidplan_server.planning.planner import Planner
from vidplan_server.planning.types import PlanOptions
from vidplan_server.sim.episode import EpisodeConfig, run_episode


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, repeats: int, device: torch.device) -> list[float]:
    out = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        out.append((time.perf_counter() - t) * 1e3)
    return out


def reference_gflops(device: torch.device, size: int = 1024, repeats: int = 20) -> float:
    """The machine's reference figure: GFLOP/s of a fixed float32 ``size`` x ``size`` matmul (median of
    ``repeats``, after one untimed run)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device)
    b = torch.randn(size, size, generator=gen).to(device)
    ms = float(np.median(timed(lambda: a @ b, repeats, device)))
    return 2.0 * size**3 / (ms / 1e3) / 1e9


def model_costs(planner: Planner, history: torch.Tensor, n: int, repeats: int) -> tuple[float, float, float]:
    """Median ms of one flow-map evaluation at batch n and at batch 1 (no grad), and of forward + backward at
    batch 1."""
    fm = planner.world.flow_map
    dev = planner.device
    shape = (planner.horizon, *history.shape[2:])
    actions = torch.zeros(n, planner.horizon, 7, device=dev)
    x = torch.randn(n, *shape, device=dev)
    s = torch.full((n,), fm.t_min, device=dev)
    t = torch.ones(n, device=dev)

    def forward(b: int = n):
        with torch.no_grad(), planner._autocast():
            fm.step(x[:b], s[:b], t[:b], history.expand(b, *history.shape[1:]), actions[:b])

    a1 = torch.zeros(1, planner.horizon, 7, device=dev, requires_grad=True)

    def forward_backward():
        with planner._autocast():
            out = fm.step(x[:1], s[:1], t[:1], history, a1)
        out.float().square().mean().backward()

    forward(), forward(1), forward_backward()
    return tuple(float(np.median(timed(f, repeats, dev))) for f in (forward, lambda: forward(1), forward_backward))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    p.add_argument("--ckpt", type=Path, default=None, help="checkpoint folder (default: the bundled one)")
    p.add_argument("--repeats", type=int, default=10, help="timed plans per configuration (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed plans per configuration (default 2)")
    p.add_argument("--n", type=int, nargs="+", default=[6, 12], help="proposal counts (default 6 12)")
    p.add_argument("--k", type=int, nargs="+", default=[1, 4], help="flow-map steps (default 1 4)")
    p.add_argument("--iters", type=int, nargs="+", default=[0, 5], help="refinement iterations (default 0 5)")
    p.add_argument("--devices", nargs="+", default=None, help="devices (default: cpu, and cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))

    reference = {d: round(reference_gflops(torch.device(d)), 1) for d in devices}
    print("reference: " + ", ".join(f"{d} {g} GFLOP/s (float32 1024^3 matmul)" for d, g in reference.items()))
    episode = run_episode(3, replace(EpisodeConfig(), max_steps=24, imperfect_fraction=0.0))
    rows = []
    grid = [(d, n, k, i) for d in devices for n in args.n for k in args.k for i in args.iters]
    planners: dict[str, Planner] = {}
    bar = tqdm(grid, desc="plan latency", file=sys.stderr)
    for device, n, k, iters in bar:
        bar.set_postfix_str(f"{device} N={n} k={k} iters={iters}")
        if device not in planners:
            planners[device] = Planner.load(args.ckpt, device=device)
        planner = planners[device]
        req = request_from_episode(
            episode,
            12,
            planner.history_len,
            planner.frame_stride,
            PlanOptions(num_proposals=n, flow_steps=k, refine_iters=iters),
        )
        for _ in range(args.warmup):
            planner.plan(req)
        totals, stages = [], {s: [] for s in STAGES}
        for _ in range(args.repeats):
            sync(planner.device)
            t = time.perf_counter()
            result = planner.plan(req)
            sync(planner.device)
            totals.append((time.perf_counter() - t) * 1e3)
            for s in STAGES:
                stages[s].append(result.timings_ms[s])
        history = planner.encode_history(req.history)
        fwd_n, fwd_1, fwd_bwd_1 = model_costs(planner, history, n, max(3, args.repeats // 2))
        model_ms = k * fwd_n + (k * ((iters + 1) * fwd_1 + iters * (fwd_bwd_1 - fwd_1)) if iters else 0.0)
        median = float(np.median(totals))
        rows.append(
            {
                "device": device,
                "n": n,
                "k": k,
                "iters": iters,
                "median_ms": round(median, 1),
                "p95_ms": round(float(np.percentile(totals, 95)), 1),
                "stages_ms": {s: round(float(np.median(v)), 1) for s, v in stages.items()},
                "network_evaluations": k + ((iters + 1) * k if iters else 0),
                "flow_fwd_batch_n_ms": round(fwd_n, 1),
                "flow_fwd_batch_1_ms": round(fwd_1, 1),
                "flow_fwd_bwd_batch_1_ms": round(fwd_bwd_1, 1),
                "model_ms": round(model_ms, 1),
                "planner_overhead": round(median / model_ms, 2),
                "score_over_rollout": round(float(np.median(stages["score"]) / np.median(stages["rollout"])), 2),
            }
        )
    reference_end = {d: round(reference_gflops(torch.device(d)), 1) for d in devices}
    header = ("device", "N", "k", "iters", "median ms", "p95 ms", *STAGES, "model ms", "x model", "score/rollout")
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for r in rows:
        print(
            " | ".join(
                str(v)
                for v in (
                    r["device"],
                    r["n"],
                    r["k"],
                    r["iters"],
                    r["median_ms"],
                    r["p95_ms"],
                    *(r["stages_ms"][s] for s in STAGES),
                    r["model_ms"],
                    r["planner_overhead"],
                    r["score_over_rollout"],
                )
            )
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "host": f"{platform.machine()} {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "repeats": args.repeats,
        "checkpoint": str(args.ckpt or "bundled default"),
        "reference_gflops": reference,  # float32 1024^3 matmul, per device, before the grid
        "reference_gflops_end": reference_end,  # the same after it (the load may have changed)
    }
    print(
        "reference: "
        + ", ".join(f"{d} {reference[d]} -> {reference_end[d]} GFLOP/s (start -> end of the run)" for d in devices)
    )
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
