"""Serving overhead: plan latency in-process vs over gRPC vs over HTTP, at the planner's default settings.

    python benchmarks/serving.py --out outputs/bench/serving.json [--requests 30] [--device cpu] [--ckpt DIR]

One server (``VidPlanServer``: gRPC and HTTP in one event loop, as ``vidplan serve`` runs it) on localhost
ephemeral ports, and one observation of the simulated scene at DROID's 180x320 per view, JPEG-encoded once
(quality 90) with one earlier observation carried in the request (T = 2), so every transport plans on the
same decoded pixels with the same seed. Requests are interleaved (in-process, service, gRPC, HTTP, ...)
so that background load hits all of them alike. Measured from the client's side, with the wire message
already built:

- ``inprocess``: ``planner.plan`` on the planner thread (the planner alone);
- ``service``: ``PlanService.plan`` in-process (adds validation, JPEG decoding, history, the queue);
- ``grpc``: a unary ``Plan`` call over a localhost channel; ``http``: ``POST /v1/plan`` with base64 JSON.

``overhead_median_ms`` = median(transport) - median(inprocess). On a busy CPU the plan itself varies by
tens of ms, which that difference inherits, so each path also reports ``overhead_paired_median_ms``: the
median over requests of (client latency - that request's own planner time on the server), which isolates
what serving adds (conversion, decoding, queueing, network). The JSON also holds the server-side stage
medians (``server_ms``: decode, queue, plan, total) of the served requests.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import platform
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import grpc
import httpx
import numpy as np
import torch
from vidplan_client.wire import vidplan_pb2 as pb
from vidplan_client.wire import vidplan_pb2_grpc as pb_grpc

from vidplan_server.data.schema import CAMERA_NAMES
from vidplan_server.planning.planner import Planner
from vidplan_server.planning.types import PlanOptions, PlanRequest, RobotState
from vidplan_server.serving.config import ServerConfig, ServiceConfig
from vidplan_server.serving.grpc_convert import ENCODING_ENUMS
from vidplan_server.serving.images import decode_image, encode_image
from vidplan_server.serving.messages import Observation, PlanCall, State
from vidplan_server.serving.server import VidPlanServer
from vidplan_server.serving.service import PlanService
from vidplan_server.sim.episode import EpisodeConfig, run_episode

STEP = 9  # observation step of the simulated episode; the history frame is STEP - frame_stride


def scene_observation(planner: Planner):
    """Two JPEG-encoded observations (history, current) of a simulated episode at 180x320, and its state."""
    config = replace(EpisodeConfig(), resolution=(180, 320), max_steps=STEP + 1, imperfect_fraction=0.0)
    episode = run_episode(0, config)
    steps = [STEP - planner.frame_stride, STEP]
    frames = [{cam: encode_image(episode.images[cam][i], "jpeg", quality=90) for cam in CAMERA_NAMES} for i in steps]
    state = State(
        joint_position=np.asarray(episode.joint_position[STEP], dtype=np.float64).tolist(),
        cartesian_position=np.asarray(episode.cartesian_position[STEP], dtype=np.float64).tolist(),
        gripper_position=float(np.asarray(episode.gripper_position[STEP]).reshape(-1)[0]),
    )
    times = [i / 15 for i in steps]
    return episode.language_instruction, frames, times, state


def wire_messages(instruction, frames, times, state):
    """The same request as protobuf and as the JSON body."""

    def pb_obs(f, t, with_state):
        return pb.Observation(
            timestamp_s=t,
            frames=[
                pb.CameraFrame(camera=c, encoding=ENCODING_ENUMS["jpeg"], width=i.width, height=i.height, data=i.data)
                for c, i in f.items()
            ],
            state=pb.RobotState(
                joint_position=state.joint_position,
                cartesian_position=state.cartesian_position,
                gripper_position=state.gripper_position,
            )
            if with_state
            else None,
        )

    def json_obs(f, t, with_state):
        out = {
            "timestamp_s": t,
            "frames": [
                {
                    "camera": c,
                    "encoding": "jpeg",
                    "width": i.width,
                    "height": i.height,
                    "data": base64.b64encode(i.data).decode(),
                }
                for c, i in f.items()
            ],
        }
        if with_state:
            out["state"] = {
                "joint_position": state.joint_position,
                "cartesian_position": state.cartesian_position,
                "gripper_position": state.gripper_position,
            }
        return out

    proto = pb.PlanRequest(
        instruction=instruction,
        observation=pb_obs(frames[1], times[1], True),
        history=[pb_obs(frames[0], times[0], False)],
    )
    body = {
        "instruction": instruction,
        "observation": json_obs(frames[1], times[1], True),
        "history": [json_obs(frames[0], times[0], False)],
    }
    call = PlanCall(
        instruction=instruction,
        observation=Observation(frames[1], times[1], state),
        history=[Observation(frames[0], times[0])],
    )
    return proto, body, call


def stats(samples_ms: list[float]) -> dict:
    a = np.asarray(samples_ms)
    return {
        "median_ms": float(np.median(a)),
        "p95_ms": float(np.percentile(a, 95)),
        "mean_ms": float(a.mean()),
        "min_ms": float(a.min()),
        "n": int(a.size),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON results file")
    ap.add_argument("--requests", type=int, default=30, help="timed requests per path (default 30)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed requests per path first (default 2)")
    ap.add_argument("--device", default="cpu", help="torch device of the planner (default cpu)")
    ap.add_argument("--ckpt", type=Path, default=None, help="checkpoint folder (default: the bundled one)")
    args = ap.parse_args(argv)
    if args.requests < 1:
        ap.error("--requests must be >= 1")

    planner = Planner.load(args.ckpt, device=args.device)
    service = PlanService(planner, ServiceConfig())
    instruction, frames, times, state = scene_observation(planner)
    proto, body, call = wire_messages(instruction, frames, times, state)
    size = tuple(planner.image_size)
    history = np.stack([np.stack([decode_image(f[c], size, c) for c in CAMERA_NAMES]) for f in frames])
    direct = PlanRequest(
        instruction,
        history,
        RobotState(np.asarray(state.joint_position), np.asarray(state.cartesian_position), state.gripper_position),
        options=PlanOptions(),
    )

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    def on_loop(coro, timeout=600):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    async def build():
        return VidPlanServer(service, ServerConfig(host="127.0.0.1", grpc_port=0, http_port=0, log_level="warning"))

    server = on_loop(build())
    on_loop(server.start())
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    plan_rpc = pb_grpc.VidPlanStub(channel).Plan
    http = httpx.Client(base_url=f"http://127.0.0.1:{server.http_port}", timeout=600)
    server_ms: dict[str, list[dict]] = {"service": [], "grpc": [], "http": []}

    def run_inprocess():
        service.worker.run_blocking(lambda: planner.plan(direct))

    def run_service():
        server_ms["service"].append(on_loop(service.plan(call)).timings_ms)

    def run_grpc():
        server_ms["grpc"].append(dict(plan_rpc(proto, timeout=600).timings_ms))

    def run_http():
        r = http.post("/v1/plan", json=body)
        r.raise_for_status()
        server_ms["http"].append(r.json()["timings_ms"])

    paths = {"inprocess": run_inprocess, "service": run_service, "grpc": run_grpc, "http": run_http}
    samples: dict[str, list[float]] = {name: [] for name in paths}
    try:
        for fn in paths.values():
            for _ in range(args.warmup):
                fn()
        for name in server_ms:
            server_ms[name].clear()
        for i in range(args.requests):
            for name, fn in paths.items():
                t = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t) * 1e3)
            print(f"\r{i + 1}/{args.requests}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
    finally:
        http.close()
        channel.close()
        on_loop(server.shutdown())
        loop.call_soon_threadsafe(loop.stop)

    results = {name: stats(s) for name, s in samples.items()}
    base = results["inprocess"]["median_ms"]
    for name in ("service", "grpc", "http"):
        results[name]["overhead_median_ms"] = results[name]["median_ms"] - base
        paired = [c - t["plan"] for c, t in zip(samples[name], server_ms[name], strict=True)]
        results[name]["overhead_paired_median_ms"] = float(np.median(paired))
        results[name]["server_ms"] = {
            k: float(np.median([t[k] for t in server_ms[name]])) for k in ("decode", "queue", "plan", "total")
        }
    results["meta"] = {
        "device": str(planner.device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "host": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "requests": args.requests,
        "options": "planner defaults",
        "defaults": planner.info().defaults.as_dict(),
        "image": "3 x 180x320 JPEG q90",
        "request_bytes": {"grpc": proto.ByteSize(), "http": len(json.dumps(body))},
        "model_version": planner.info().model_version,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))

    print(f"{'path':<10} {'median ms':>10} {'p95 ms':>10} {'overhead ms':>12} {'paired ms':>10}")
    for name in paths:
        r = results[name]
        over = f"{r['overhead_median_ms']:12.1f}" if "overhead_median_ms" in r else f"{'-':>12}"
        paired = f"{r['overhead_paired_median_ms']:10.1f}" if "overhead_paired_median_ms" in r else f"{'-':>10}"
        print(f"{name:<10} {r['median_ms']:10.1f} {r['p95_ms']:10.1f} {over} {paired}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
