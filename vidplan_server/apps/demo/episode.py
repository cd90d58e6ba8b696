"""The demo's episode: the simulated scene driven through the robot client's ``RobotLoop`` against a server."""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from pathlib import Path

import numpy as np
from vidplan_client.contract import ACTION_SPACE
from vidplan_client.droid import IMAGE_KEY

from vidplan_server.apps.demo.video import video_frames
from vidplan_server.sim.realtime import ScaledClock, TimedClient


class RecordingEnv:
    """Passes calls to the simulated env; keeps the views of every observation the loop took, in order."""

    def __init__(self, env) -> None:
        self.env = env
        self.views: list[dict[str, np.ndarray]] = []

    def get_observation(self) -> dict:
        obs = self.env.get_observation()
        self.views.append(obs[IMAGE_KEY])
        return obs

    def update_robot(self, action, action_space: str = ACTION_SPACE, blocking: bool = False):
        return self.env.update_robot(action, action_space=action_space, blocking=blocking)


def run_episode(client, info, args: argparse.Namespace, out: Path) -> dict:
    """Drive one simulated episode through RobotLoop against ``client``; write the video; return the report."""
    from vidplan_client import CAMERA_NAMES, LoopConfig, RobotLoop, plan_options

    from vidplan_server.data.video import encode_video
    from vidplan_server.sim.robot_env import SimEnvConfig, SimRobotEnv

    sim = SimRobotEnv(SimEnvConfig(split=args.split, resolution=(info.image_height or 64, info.image_width or 64)))
    try:
        task_instruction = sim.reset(args.seed)
        instruction = args.instruction or task_instruction
        config = LoopConfig.for_server(
            info,
            instruction,
            session_id=f"demo-{args.seed}-{uuid.uuid4().hex[:8]}",
            open_loop_steps=args.open_loop,
            plan_timeout_s=args.plan_timeout,
            options=plan_options(
                num_proposals=args.proposals,
                refine_iters=args.refine_iters,
                flow_steps=args.flow_steps,
                seed=args.seed,
                return_heatmaps=True,
            ),
        )
        dt_s = config.dt_s
        env, timed = RecordingEnv(sim), TimedClient(client, args.slowdown)
        clock = ScaledClock(args.slowdown)
        wall_start = time.monotonic()
        with RobotLoop(env, timed, config, clock=clock, sleep=clock.sleep) as loop:
            loop.run(args.steps)
        wall_s, loop_s = time.monotonic() - wall_start, clock()
        success = bool(sim.is_success())
        sim_s = sim.clock()
        ik_failures = sim.ik_failures
    finally:
        sim.close()

    records, plans = loop.records, loop.plans
    responses = {p.sequence: timed.responses[p.sequence] for p in plans if p.outcome == "used"}
    video = out / "demo.mp4"
    frames = video_frames(env.views, records, responses, args.view_scale, tuple(CAMERA_NAMES))
    encode_video(frames, video, fps=round(1.0 / dt_s))
    answered = [
        timed.wall_ms[p.sequence] for p in plans if p.outcome in ("used", "dropped") and p.sequence in timed.wall_ms
    ]
    server_ms = [
        timed.responses[p.sequence].timings_ms["total"]
        for p in plans
        if p.sequence in timed.responses and "total" in timed.responses[p.sequence].timings_ms
    ]
    gaps = np.diff([r.time_s for r in records])
    return {
        "instruction": instruction,
        "task_instruction": task_instruction,
        "seed": args.seed,
        "split": args.split,
        "success": success,
        "steps": len(records),
        "chunk_steps": sum(r.kind == "chunk" for r in records),
        "holds": sum(r.kind == "hold" for r in records),
        "plans_sent": len(plans),
        "plans_received": sum(p.outcome in ("used", "dropped") for p in plans),
        "plans_used": sum(p.outcome == "used" for p in plans),
        # a server past its deadline skips the heatmaps (anytime planning): the video shows them only for these
        "plans_with_heatmaps": sum(len(r.heatmaps) > 0 for r in responses.values()),
        "plans_dropped": sum(p.outcome == "dropped" for p in plans),
        "plans_failed": sum(p.outcome == "failed" for p in plans),
        "median_plan_latency_ms": round(statistics.median(answered), 1) if answered else None,
        "median_server_plan_ms": round(statistics.median(server_ms), 1) if server_ms else None,
        "open_loop_steps": args.open_loop,
        "slowdown": args.slowdown,
        "overruns": int(np.sum(gaps > 1.5 * dt_s)),
        "ik_failures": int(ik_failures),
        "sim_time_s": round(sim_s, 3),
        "loop_time_s": round(loop_s, 3),
        "wall_time_s": round(wall_s, 3),
        "model_version": info.model_version,
        "video": str(video),
        "video_size": [int(frames.shape[2]), int(frames.shape[1])],  # width, height
    }
