"""What an operator watching costs the robots: plan latency with and without a dashboard watcher, same load.

    python benchmarks/dashboard_cost.py --out outputs/bench/dashboard_cost.json [--ckpt DIR] [--robots 1]
        [--plans 15] [--blocks 6] [--settle 1] [--watch first|all] [--server-threads 2] [--dashboard-config JSON]

The server as ``vidplan serve`` builds it (HTTP only, the dashboard on, heatmaps rendered by a process of their
own at the default 2 Hz per watched session), in a child process, and ``--robots`` closed-loop robots in this
process, each replaying one observation of the simulated scene through ``POST /v1/plan`` at the server's default
options: ask, get the chunk, wait for the next 15 Hz cycle (a uniform 0-67 ms, seeded), ask again. Blocks of
``--plans`` plans per robot alternate between no watcher (``off``) and a browser-like watcher reading
``/dashboard/api/events`` (``on``: watching the first robot, or one watcher per robot with ``--watch all``), so
background load on a shared machine hits both alike. Every plan of a watched robot is then offered for rendering
(plans come slower than 2 Hz on a CPU), the worst case per watcher.

The first ``--settle`` plans of each block are left out (the watcher connecting or leaving, and a render started
in the previous block, belong to neither condition). Reported per condition: the server's own total latency per
plan (decode + queue + plan, from the reply's ``timings_ms``; the figure the <= 5 % target is about), the robots'
round trip, and their medians' difference; each watched block against the unwatched blocks beside it (slow drifts
of the machine's load cancel there); the renders the server did (from ``/metrics``) and their mean time; the load
average before and after (the machine may be shared). Prints a table, writes the JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np

from vidplan_server.data.schema import CAMERA_NAMES
from vidplan_server.sim.episode import EpisodeConfig, run_episode

STEP = 9  # the observation replayed: step 9 of a simulated episode (the robot is moving toward the object)
CYCLE_S = 1.0 / 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def observation() -> tuple[list[dict], dict, str]:
    """The three views (raw RGB, base64) of one simulated step, its state, and its instruction."""
    episode = run_episode(0, replace(EpisodeConfig(), max_steps=STEP + 1, imperfect_fraction=0.0))
    frames = []
    for cam in CAMERA_NAMES:
        image = np.ascontiguousarray(episode.images[cam][STEP])
        frames.append(
            {
                "camera": cam,
                "encoding": "raw",
                "width": int(image.shape[1]),
                "height": int(image.shape[0]),
                "data": base64.b64encode(image.tobytes()).decode(),
            }
        )
    state = {
        "joint_position": [float(v) for v in episode.joint_position[STEP]],
        "cartesian_position": [float(v) for v in episode.cartesian_position[STEP]],
        "gripper_position": float(np.ravel(episode.gripper_position[STEP])[0]),
    }
    return frames, state, episode.language_instruction


def serve_child(port: int, ckpt: str | None, dashboard: dict) -> None:
    """The child process: ``vidplan serve``'s server (HTTP only) with the given DashboardConfig fields."""
    import asyncio

    from vidplan_server.planning.planner import Planner
    from vidplan_server.serving.config import ServerConfig, ServiceConfig
    from vidplan_server.serving.dashboard.config import DashboardConfig, RenderModel
    from vidplan_server.serving.server import VidPlanServer
    from vidplan_server.serving.service import PlanService

    service = PlanService(Planner.load(ckpt), ServiceConfig(max_queue=16))
    renderer = dashboard.pop("renderer", "process")  # as `vidplan serve` renders: a process of its own
    model = RenderModel(ckpt) if renderer == "process" else None
    config = ServerConfig(
        grpc_port=-1, http_port=port, log_level="warning", dashboard=DashboardConfig(**dashboard, render_model=model)
    )

    async def run() -> None:
        await VidPlanServer(service, config).serve_until_signal()

    asyncio.run(run())


class Server:
    """The server in a child process on a free HTTP port (no gRPC), its log in ``log_path``."""

    def __init__(self, ckpt: Path | None, threads: int, log_path: Path, dashboard: dict) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, __file__, "--serve-child", str(self.port), "--dashboard-config", json.dumps(dashboard)]
        if ckpt is not None:
            cmd += ["--ckpt", str(ckpt)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vidplan serve exited with {self.proc.returncode}; see {log_path}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("vidplan serve did not get ready in 600 s")

    def metrics(self) -> dict[str, float]:
        out = {}
        for line in httpx.get(f"{self.url}/metrics", timeout=10).text.splitlines():
            if line.startswith("vidplan_dashboard_"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class Robot:
    """Closed loop: plan, wait for the next control cycle, plan again; records every reply's latencies."""

    def __init__(self, url: str, session: str, frames, state, instruction: str, seed: int) -> None:
        self.url, self.session = url, session
        self.frames, self.state, self.instruction = frames, state, instruction
        self.rng = random.Random(seed)
        self.sequence = 0
        self.client = httpx.Client(timeout=600)

    def run(self, plans: int, condition: str, records: list[dict]) -> None:
        for _ in range(plans):
            self.sequence += 1
            body = {
                "session_id": self.session,
                "sequence": self.sequence,
                "instruction": self.instruction,
                "observation": {"timestamp_s": 0.2 * self.sequence, "frames": self.frames, "state": self.state},
                "options": {"seed": 7},
            }
            t0 = time.perf_counter()
            response = self.client.post(f"{self.url}/v1/plan", json=body)
            round_trip_ms = (time.perf_counter() - t0) * 1000.0
            response.raise_for_status()
            timings = response.json()["timings_ms"]
            records.append(
                {
                    "condition": condition,
                    "robot": self.session,
                    "server_total_ms": timings["total"],
                    "planner_ms": timings.get("planner_total"),
                    "round_trip_ms": round_trip_ms,
                }
            )
            time.sleep(self.rng.uniform(0.0, CYCLE_S))


class Watcher:
    """A browser stand-in: reads a session's dashboard events until stopped; counts what it got."""

    def __init__(self, url: str, session: str) -> None:
        self.url, self.session = url, session
        self.counts: dict[str, int] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def start(self) -> Watcher:
        self._thread.start()
        self._ready.wait(30)
        return self

    def _read(self) -> None:
        with httpx.stream(
            "GET",
            f"{self.url}/dashboard/api/events",
            params={"watch": self.session},
            timeout=httpx.Timeout(30, read=None),
        ) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    kind = json.loads(line[5:])["type"]
                    self.counts[kind] = self.counts.get(kind, 0) + 1
                    self._ready.set()
                if self._stop.is_set():
                    return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def summary(records: list[dict], key: str) -> dict:
    values = [r[key] for r in records]
    return {
        "n": len(values),
        "median": round(statistics.median(values), 1),
        "p90": round(float(np.percentile(values, 90)), 1),
        "mean": round(statistics.fmean(values), 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path)
    p.add_argument("--ckpt", type=Path, default=None, help="bundle (default: the bundled checkpoint)")
    p.add_argument("--robots", type=int, default=1)
    p.add_argument("--plans", type=int, default=15, help="plans per robot and block")
    p.add_argument("--blocks", type=int, default=6, help="blocks, alternating off / on")
    p.add_argument(
        "--settle",
        type=int,
        default=1,
        help="plans at the start of each block left out of the figures (the switch itself) (default 1)",
    )
    p.add_argument("--watch", choices=("first", "all"), default="first")
    p.add_argument("--server-threads", type=int, default=2, help="OMP_NUM_THREADS of the server")
    p.add_argument(
        "--dashboard-config",
        default="{}",
        help='DashboardConfig fields as JSON, e.g. \'{"render_nice": 0}\', and "renderer": "process" '
        '(default, as vidplan serve) or "thread" (the service\'s planner on the render thread)',
    )
    p.add_argument("--serve-child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_child is not None:
        return serve_child(args.serve_child, str(args.ckpt) if args.ckpt else None, json.loads(args.dashboard_config))
    if args.out is None:
        p.error("--out is required")

    load_before = os.getloadavg()
    frames, state, instruction = observation()
    server = Server(
        args.ckpt, args.server_threads, args.out.with_suffix(".server.log"), json.loads(args.dashboard_config)
    )
    records: list[dict] = []
    watched: dict[str, int] = {}
    try:
        robots = [Robot(server.url, f"robot-{i}", frames, state, instruction, seed=i) for i in range(args.robots)]
        for robot in robots:  # one untimed plan each: the session exists before anyone watches it
            robot.run(1, "warmup", [])
        for block in range(args.blocks):
            condition = "off" if block % 2 == 0 else "on"
            watchers = []
            if condition == "on":
                sessions = [r.session for r in robots] if args.watch == "all" else [robots[0].session]
                watchers = [Watcher(server.url, s).start() for s in sessions]
            threads = [
                threading.Thread(target=r.run, args=(args.plans, f"{condition}:{block}", records)) for r in robots
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for w in watchers:
                w.stop()
                for kind, n in w.counts.items():
                    watched[kind] = watched.get(kind, 0) + n
            print(f"block {block + 1}/{args.blocks} ({condition}) done", file=sys.stderr)
        metrics = server.metrics()
    finally:
        server.stop()
    load_after = os.getloadavg()

    seen: dict[tuple[str, str], int] = {}
    for r in records:
        r["condition"], r["block"] = r["condition"].split(":")[0], int(r["condition"].split(":")[1])
        r["index_in_block"] = seen[(r["robot"], r["block"])] = seen.get((r["robot"], r["block"]), -1) + 1
    records = [r for r in records if r["index_in_block"] >= args.settle]
    result: dict = {"conditions": {}, "options": vars(args) | {"out": str(args.out), "ckpt": str(args.ckpt)}}
    # Per block, and each watched block against the mean of the unwatched blocks next to it: slow drifts of a
    # shared machine's load cancel in that ratio.
    block_medians = [
        statistics.median(r["server_total_ms"] for r in records if r["block"] == b) for b in range(args.blocks)
    ]
    paired = []
    for b in range(1, args.blocks, 2):
        neighbours = [block_medians[n] for n in (b - 1, b + 1) if n < args.blocks]
        paired.append(100.0 * (block_medians[b] / statistics.fmean(neighbours) - 1.0))
    result["block_medians_ms"] = [round(m, 1) for m in block_medians]
    result["paired_difference_pct"] = {
        "median": round(statistics.median(paired), 2),
        "per_block": [round(d, 2) for d in paired],
    }
    for condition in ("off", "on"):
        rows = [r for r in records if r["condition"] == condition]
        result["conditions"][condition] = {
            "server_total_ms": summary(rows, "server_total_ms"),
            "round_trip_ms": summary(rows, "round_trip_ms"),
        }
    off, on = (result["conditions"][c]["server_total_ms"]["median"] for c in ("off", "on"))
    rt_off, rt_on = (result["conditions"][c]["round_trip_ms"]["median"] for c in ("off", "on"))
    renders = metrics.get('vidplan_dashboard_renders_total{outcome="rendered"}', 0.0)
    render_sum = metrics.get("vidplan_dashboard_render_seconds_sum", 0.0)
    result.update(
        median_difference_pct=round(100.0 * (on - off) / off, 2),
        round_trip_median_difference_pct=round(100.0 * (rt_on - rt_off) / rt_off, 2),
        renders=int(renders),
        renders_superseded=int(metrics.get('vidplan_dashboard_renders_total{outcome="superseded"}', 0.0)),
        render_mean_ms=round(1000.0 * render_sum / renders, 1) if renders else None,
        watcher_events=watched,
        load_average_before=[round(v, 2) for v in load_before],
        load_average_after=[round(v, 2) for v in load_after],
        machine={"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        records=records,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{'condition':<10} {'plans':>6} {'server median ms':>17} {'p90':>8} {'round trip median ms':>21}")
    for condition in ("off", "on"):
        c = result["conditions"][condition]
        print(
            f"{condition:<10} {c['server_total_ms']['n']:>6} {c['server_total_ms']['median']:>17} "
            f"{c['server_total_ms']['p90']:>8} {c['round_trip_ms']['median']:>21}"
        )
    print(
        f"\nmedian difference with a watcher: {result['median_difference_pct']:+.1f} % (server), "
        f"{result['round_trip_median_difference_pct']:+.1f} % (round trip); watched block vs the unwatched blocks "
        f"beside it: median {result['paired_difference_pct']['median']:+.1f} % "
        f"(per block {result['paired_difference_pct']['per_block']})"
    )
    print(f"block medians (ms, off / on alternating): {result['block_medians_ms']}")
    print(
        f"renders: {result['renders']} (mean {result['render_mean_ms']} ms), superseded "
        f"{result['renders_superseded']}; load average before {result['load_average_before']}, after "
        f"{result['load_average_after']}"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
