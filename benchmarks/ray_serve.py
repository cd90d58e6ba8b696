"""Plans per second through Ray Serve with 1 and 2 replicas: ``vidplan serve --ray`` as a user starts it.

    python benchmarks/ray_serve.py --out outputs/bench/ray_serve.json [--replicas 1,2] [--clients 4] \\
        [--requests 24] [--ckpt DIR] [--proposals 6]

For each replica count: ``vidplan serve --ray --ray-min-replicas N --ray-max-replicas N`` in a child process (a local
Ray instance with this machine's CPUs, one CPU per replica, one intra-op thread each), waits until both Serve
proxies answer, then ``--clients`` robots each send ``--requests / --clients`` unary gRPC plans back to back
(each carrying its history, so any replica may answer; three 180x320 JPEG views; ``--proposals`` proposals, no
refinement), then the same over HTTP. Reports plans/s, latency percentiles, refusals and how the plans spread over
the replicas (the ``x-vidplan-replica`` each reply names), start-up time, and SIGTERM to exit. Needs the ``scale``
extra; localhost only; bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.serving.doubles import json_request, pb_request  # noqa: E402 - the tests' request builders


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(http_url: str, proc: subprocess.Popen, timeout_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"vidplan serve --ray exited with {proc.returncode}")
        try:
            response = httpx.get(f"{http_url}/readyz", timeout=2)
            if response.status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise TimeoutError("Serve did not become ready")


def _grpc_robot(target: str, robot: int, count: int, options: dict) -> list[tuple[float, str, str]]:
    from vidplan_client.wire import vidplan_pb2_grpc as pb_grpc

    out = []
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.VidPlanStub(channel)
        for i in range(count):
            # No session: the request carries its history (one earlier observation), so any replica can answer.
            request = pb_request(sequence=i + 1, t=0.2 * (i + 1), **options)
            past = request.history.add()
            past.CopyFrom(request.observation)
            past.timestamp_s -= 0.2
            past.ClearField("state")
            t = time.perf_counter()
            try:
                _, call = stub.Plan.with_call(request, timeout=120)
                outcome, replica = "OK", dict(call.trailing_metadata()).get("x-vidplan-replica", "?")
            except grpc.RpcError as exc:
                outcome, replica = exc.code().name, "-"
            out.append((time.perf_counter() - t, outcome, replica))
    return out


def _http_robot(url: str, robot: int, count: int, options: dict) -> list[tuple[float, str, str]]:
    out = []
    with httpx.Client(timeout=120) as client:
        for i in range(count):
            body = json_request(sequence=i + 1, t=0.2 * (i + 1), encoding="jpeg", **options)
            observation = body["observation"]
            body["history"] = [{"timestamp_s": observation["timestamp_s"] - 0.2, "frames": observation["frames"]}]
            t = time.perf_counter()
            response = client.post(f"{url}/v1/plan", json=body)
            out.append(
                (time.perf_counter() - t, str(response.status_code), response.headers.get("x-vidplan-replica", "-"))
            )
    return out


def _summary(results: list[tuple[float, str, str]], wall_s: float) -> dict:
    ok = [r for r in results if r[1] in ("OK", "200")]
    latencies = np.array([r[0] for r in ok]) * 1000.0
    return {
        "requests": len(results),
        "ok": len(ok),
        "plans_per_s": round(len(ok) / wall_s, 3),
        "wall_s": round(wall_s, 2),
        "latency_ms": {
            q: round(float(np.percentile(latencies, p)), 1) for q, p in (("p50", 50), ("p90", 90), ("max", 100))
        }
        if len(ok)
        else None,
        "outcomes": dict(Counter(r[1] for r in results)),
        "per_replica": dict(Counter(r[2] for r in ok)),
    }


def run(replicas: int, args: argparse.Namespace) -> dict:
    grpc_port, http_port = _free_port(), _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("VIDPLAN_TOKEN", None)
    command = [
        sys.executable,
        "-m",
        "vidplan_server.cli",
        "serve",
        "--ray",
        "--host",
        "127.0.0.1",
        "--grpc-port",
        str(grpc_port),
        "--http-port",
        str(http_port),
        "--ray-min-replicas",
        str(replicas),
        "--ray-max-replicas",
        str(replicas),
        "--ray-cpus-per-replica",
        "1",
        "--max-queue",
        str(args.clients),
        "--log-level",
        "warning",
    ]
    if args.ckpt:
        command += ["--ckpt", str(args.ckpt)]
    log = (args.out.parent / f"ray_serve_{replicas}.log").open("w")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    result: dict = {"replicas": replicas}
    try:
        http_url = f"http://127.0.0.1:{http_port}"
        result["ready_s"] = round(_wait_ready(http_url, proc, timeout_s=600), 1)
        options = {"num_proposals": args.proposals, "refine_iters": 0}
        per_robot = max(1, args.requests // args.clients)
        # one warm-up plan per replica and transport, not measured
        _grpc_robot(f"127.0.0.1:{grpc_port}", 99, replicas, options)
        for transport, robot in (("grpc", _grpc_robot), ("http", _http_robot)):
            target = f"127.0.0.1:{grpc_port}" if transport == "grpc" else http_url
            start = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                jobs = [pool.submit(robot, target, r, per_robot, options) for r in range(args.clients)]
                chunks = [job.result() for job in jobs]
            result[transport] = _summary([x for chunk in chunks for x in chunk], time.perf_counter() - start)
            print(f"replicas {replicas} {transport}: {result[transport]}", flush=True)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        result["exit_code"] = proc.wait(120)
        result["stop_s"] = round(time.monotonic() - start, 1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        log.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--replicas", default="1,2", help="replica counts to measure, comma-separated (default 1,2)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent robots (default 4)")
    parser.add_argument("--requests", type=int, default=24, help="plans per transport and run (default 24)")
    parser.add_argument("--proposals", type=int, default=6, help="proposals per plan (default 6)")
    parser.add_argument("--ckpt", type=Path, default=None, help="checkpoint (default: the bundled one)")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = {
        "host": f"{platform.machine()} {os.cpu_count()} CPUs",
        "clients": args.clients,
        "proposals": args.proposals,
        "runs": [run(int(n), args) for n in args.replicas.split(",")],
    }
    args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
