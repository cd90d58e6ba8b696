"""How many robots one server holds: ``vidplan loadtest`` at 1, 2, 4, 8 robots against ``vidplan serve``.

    python benchmarks/loadtest.py --out outputs/bench/loadtest.json [--robots 1,2,4,8] [--duration 60] \\
        [--warmup 10] [--data outputs/data/sim_val] [--deadline-ms 4000] [--proposals N] [--refine-iters I] \\
        [--ckpt DIR] [--transport grpc]

For each server variant, ``vidplan serve`` on the bundled model (or ``--ckpt``) in a child process on free
localhost ports (its log in ``OUT_DIR/server-<variant>.log``), then for each robot count a load test of
``--duration`` seconds (requests of the first ``--warmup`` seconds not counted): every robot replays a recorded
episode of ``--data`` at 15 Hz and re-plans every 8 control steps (0.53 s) when the server keeps up, with the
server's default planner options and a ``--deadline-ms`` deadline. Variants: ``unbatched``, and ``batched``
(``--batch-window-ms W``) when ``vidplan serve --help`` offers cross-robot batching; otherwise only unbatched is
measured and the JSON says so. Prints a table (plans/s, latency percentiles corrected for coordinated omission,
deadline misses, errors, server RSS growth) and the largest robot count whose p99 stayed within the deadline with
no errors; writes the JSON to ``--out`` and each point's ``loadtest.json`` and plots next to it. Localhost only;
every run bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vidplan_server.apps.loadtest.app import run_loadtest  # noqa: E402
from vidplan_server.apps.loadtest.config import LoadTestConfig  # noqa: E402
from vidplan_server.apps.loadtest.replay import load_episodes  # noqa: E402
from vidplan_server.serving.local import free_ports  # noqa: E402

READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 60.0


def batching_option() -> str | None:
    """The server's cross-robot batching option, when this checkout's ``vidplan serve`` has one."""
    help_text = subprocess.run(
        [sys.executable, "-m", "vidplan_server.cli", "serve", "--help"], capture_output=True, text=True, timeout=120
    ).stdout
    return "--batch-window-ms" if "--batch-window-ms" in help_text else None


class Server:
    """``vidplan serve`` in a child process on free localhost ports; always stopped on exit."""

    def __init__(self, extra: list[str], ckpt: Path | None, log: Path) -> None:
        self.grpc_port, self.http_port = free_ports(2)
        cmd = [sys.executable, "-m", "vidplan_server.cli", "serve", "--host", "127.0.0.1"]
        cmd += ["--grpc-port", str(self.grpc_port), "--http-port", str(self.http_port), "--log-level", "warning"]
        cmd += (["--ckpt", str(ckpt)] if ckpt else []) + extra
        self.cmd, self.log = cmd, log
        self.proc: subprocess.Popen | None = None
        self.ready_s = float("nan")

    def __enter__(self) -> Server:
        start = time.monotonic()
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            while time.monotonic() - start < READY_TIMEOUT_S:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"vidplan serve exited with {self.proc.returncode}; see {self.log}")
                try:
                    if httpx.get(f"http://127.0.0.1:{self.http_port}/readyz", timeout=2).status_code == 200:
                        self.ready_s = time.monotonic() - start
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(1.0)
            raise TimeoutError(f"vidplan serve was not ready after {READY_TIMEOUT_S:.0f} s; see {self.log}")
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def measure(server: Server, robots: int, args: argparse.Namespace, episodes, out: Path) -> dict:
    port = server.grpc_port if args.transport == "grpc" else server.http_port
    config = LoadTestConfig(
        target=f"127.0.0.1:{port}",
        data=str(args.data),
        transport=args.transport,
        robots=robots,
        duration_s=args.duration,
        warmup_s=args.warmup,
        deadline_ms=args.deadline_ms,
        open_loop_horizon=8,
        control_hz=15.0,
        metrics_port=server.http_port,
        memory_every_s=5.0,
        proposals=args.proposals,
        refine_iters=args.refine_iters,
    )
    report = asyncio.run(run_loadtest(config, episodes, out, progress=not args.quiet))
    lat = report["latency_ms"]
    return {
        "robots": robots,
        "plans_per_s": report["plans_per_s"],
        "requests_per_s": report["requests_per_s"],
        "p50_ms": lat["p50"],
        "p90_ms": lat["p90"],
        "p99_ms": lat["p99"],
        "p999_ms": lat["p99.9"],
        "max_ms": lat["max"],
        "p50_uncorrected_ms": report["latency_ms_uncorrected"]["p50"],
        "p99_uncorrected_ms": report["latency_ms_uncorrected"]["p99"],
        "requests": report["requests"],
        "plans": report["plans"],
        "replies_used": report["stages"][-1]["replies_used"],
        "deadline_miss_rate": report["deadline_miss_rate"],
        "planner_deadline_hit_rate": report["planner_deadline_hit_rate"],
        "errors_by_status": report["errors_by_status"],
        "held": report["stages"][-1]["held"],
        "server_stage_mean_ms": {k: v["mean"] for k, v in report["server_stage_ms"].items()},
        "rss_growth_mb": report["memory"].get("growth_mb"),
        "rss_end_mb": report["memory"].get("rss_end_mb"),
        "load_average": [report["load_average"]["before"][0], report["load_average"]["after"][0]],
    }


def _fmt(value, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="JSON file to write (plots and per-point JSON beside it)")
    p.add_argument("--robots", default="1,2,4,8", help="robot counts to measure (default 1,2,4,8)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds per point (default 60)")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds per point not counted (default 10)")
    p.add_argument("--data", type=Path, default=ROOT / "outputs/data/sim_val", help="recorded episodes to replay")
    p.add_argument(
        "--deadline-ms",
        type=int,
        default=4000,
        help="per-request deadline and latency budget (default 4000: on the shared 2-core CPU one plan at the default "
        "options takes 2-3 s and the planner refuses budgets under its minimum informed pass, about 1.75 s)",
    )
    p.add_argument("--proposals", type=int, default=None, help="options.num_proposals (default: the server's, 12)")
    p.add_argument("--refine-iters", type=int, default=None, help="options.refine_iters (default: the server's, 0)")
    p.add_argument("--transport", choices=("grpc", "http"), default="grpc")
    p.add_argument("--ckpt", type=Path, default=None, help="checkpoint of the server (default: bundled)")
    p.add_argument("--batch-window-ms", type=float, default=5.0, help="window of the batched variant (default 5)")
    p.add_argument("--quiet", action="store_true", help="no live progress")
    args = p.parse_args()
    counts = [int(c) for c in args.robots.split(",")]
    folder = args.out.parent / args.out.stem
    folder.mkdir(parents=True, exist_ok=True)

    option = batching_option()
    variants = {"unbatched": [option, "0"] if option else []}
    if option:
        variants["batched"] = [option, f"{args.batch_window_ms:g}"]
    episodes = load_episodes(args.data, max(counts))
    results: dict = {
        "settings": {
            "robots": counts,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "deadline_ms": args.deadline_ms,
            "proposals": args.proposals or "server default",
            "refine_iters": args.refine_iters if args.refine_iters is not None else "server default",
            "transport": args.transport,
            "open_loop_horizon": 8,
            "control_hz": 15,
            "data": str(args.data),
            "ckpt": str(args.ckpt) if args.ckpt else "bundled",
            "batching": option or "not available in this checkout's vidplan serve: unbatched only",
            "cpus": os.cpu_count(),
        },
        "variants": {},
    }
    for name, extra in variants.items():
        with Server(extra, args.ckpt, folder / f"server-{name}.log") as server:
            points = []
            for robots in counts:
                point = measure(server, robots, args, episodes, folder / f"{name}-r{robots}")
                points.append(point)
                print(
                    f"{name} {robots} robot(s): {point['plans_per_s']:.2f} plans/s, p99 {_fmt(point['p99_ms'])} ms, "
                    f"errors {point['errors_by_status'] or 'none'}",
                    flush=True,
                )
            held = [pt["robots"] for pt in points if pt["held"]]
            results["variants"][name] = {
                "server_ready_s": round(server.ready_s, 1),
                "points": points,
                "largest_count_held": max(held) if held else None,
            }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")

    header = (
        "| server | robots | plans/s | measured p50 ms | corrected p99 / p99.9 ms | max ms | no plan in time | "
        "errors | server RSS growth | load avg |"
    )
    print(header)
    print("| --- " * (header.count("|") - 1) + "|")
    for name, variant in results["variants"].items():
        for pt in variant["points"]:
            errors = ", ".join(f"{k} x{n}" for k, n in pt["errors_by_status"].items()) or "none"
            miss = "-" if pt["deadline_miss_rate"] is None else f"{100 * pt['deadline_miss_rate']:.0f} %"
            print(
                f"| {name} | {pt['robots']} | {pt['plans_per_s']:.2f} | {_fmt(pt['p50_uncorrected_ms'])} | "
                f"{_fmt(pt['p99_ms'])} / {_fmt(pt['p999_ms'])} | {_fmt(pt['max_ms'])} | {miss} | {errors} | "
                f"{_fmt(pt['rss_growth_mb'], 1)} MB | {pt['load_average'][0]:.1f} -> {pt['load_average'][1]:.1f} |"
            )
    for name, variant in results["variants"].items():
        print(
            f"{name}: largest robot count with p99 <= {args.deadline_ms} ms and no errors: "
            f"{variant['largest_count_held'] if variant['largest_count_held'] is not None else 'none'}"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
