"""``--realtime``: the closed loop through the real robot client and a planning server, as ``vidplan demo`` runs it.

The synchronous runner lets simulated time wait for the agent. Here the simulated robot is driven by the code a real
robot runs (``vidplan_client``'s ``RobotLoop``: a command every 1/15 s, plans requested on a worker thread, holding
when no chunk is usable) against ``vidplan serve`` (the one at ``server``, or one started here on free localhost
ports and stopped at the end), so planning latency costs simulated time. The loop clock is wall time / ``slowdown``
(``sim.realtime.ScaledClock``): 1 is real time, the robot sees the server's true latency; 5 makes the server look 5
times faster (a GPU standing in for this CPU). Plan deadlines are in simulated seconds.

Decided: only ``vidplan`` runs here, as the server's default planning (its proposals, UQ weighting and refinement);
the other agents differ in knobs of the in-process planner, not of the wire. Its episodes are recorded as agent
``vidplan@realtime`` (``vidplan@realtime-x5`` at slowdown 5), so they sit next to the synchronous ``vidplan`` in
the report and the difference is what latency costs. Scenes, episode end, success, instruction following and failure
causes are the synchronous runner's (``runner``); the record adds holds, used / dropped / failed plans and the
median round trip. Episodes run one at a time (parallel episodes would share the server and distort the latency).
"""

from __future__ import annotations

import contextlib
import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vidplan_server.data.schema import CAMERA_NAMES, DT_S
from vidplan_server.evaluation.closed_loop.outcome import GraspMonitor, failure_cause
from vidplan_server.evaluation.closed_loop.runner import (
    ClosedLoopConfig,
    ClosedLoopError,
    Job,
    _error,
    check_options,
    episode_path,
    load_episode,
    plan_jobs,
    video_path,
    write_json_atomic,
)
from vidplan_server.evaluation.closed_loop.video import EpisodeVideo
from vidplan_server.sim.episode import episode_seed
from vidplan_server.sim.robot_env import SimEnvConfig, SimRobotEnv
from vidplan_server.sim.scene import SimScene

REALTIME_AGENTS = ("vidplan",)


@dataclass(frozen=True)
class RealtimeConfig:
    server: str | None = None  # host:port of a running vidplan serve; None: start one here
    slowdown: float = 1.0  # wall seconds per simulated second
    plan_timeout_s: float = 1.0  # deadline of one plan, simulated seconds
    token: str | None = None  # bearer token of the server
    startup_timeout_s: float = 180.0  # how long a server started here may take to report SERVING

    def __post_init__(self) -> None:
        if not self.slowdown > 0 or not self.plan_timeout_s > 0:
            raise ClosedLoopError(
                f"--slowdown and --plan-timeout must be > 0, got {self.slowdown}, {self.plan_timeout_s}"
            )


def realtime_name(agent: str, slowdown: float) -> str:
    """The name realtime episodes are recorded under: ``vidplan@realtime``, ``vidplan@realtime-x5``."""
    return f"{agent}@realtime" + ("" if slowdown == 1 else f"-x{slowdown:g}")


class _Watched:
    """Passes the RobotEnv calls on; keeps the last observation's views for the video."""

    def __init__(self, env: SimRobotEnv) -> None:
        self.env = env
        self.views: dict[str, np.ndarray] | None = None

    def get_observation(self) -> dict:
        obs = self.env.get_observation()
        self.views = obs["image"]
        return obs

    def update_robot(self, action, action_space: str = "cartesian_position", blocking: bool = False):
        return self.env.update_robot(action, action_space=action_space, blocking=blocking)


def _heatmap_array(response) -> np.ndarray | None:
    """The response's heatmaps as ``(H, V, h, w, 3)`` uint8, views in CAMERA_NAMES order; None if incomplete."""
    from vidplan_server.data.video_frames import heatmaps_by_frame

    by_frame = heatmaps_by_frame(response)
    if not by_frame or any(set(v) != set(CAMERA_NAMES) for v in by_frame.values()):
        return None
    return np.stack([np.stack([by_frame[f][c] for c in CAMERA_NAMES]) for f in sorted(by_frame)])


def run_realtime_episode(
    client,
    info,
    scene: SimScene,
    job: Job,
    config: ClosedLoopConfig,
    rt: RealtimeConfig,
    video: EpisodeVideo | None = None,
) -> dict:
    """One episode through ``RobotLoop`` against ``client`` (a connected ``VidPlanClient``; ``info``: its GetInfo)."""
    from vidplan_client import LoopConfig, RobotLoop, plan_options
    from vidplan_client.contract import MAX_ROTATION_PER_STEP_RAD, MAX_TRANSLATION_PER_STEP_M

    from vidplan_server.sim.realtime import ScaledClock, TimedClient

    t_start = time.perf_counter()
    seed = episode_seed(config.seed, job.split, job.index)
    sim = SimRobotEnv(SimEnvConfig(split=job.split, resolution=config.resolution), scene=scene)
    instruction = sim.reset(seed)
    monitor = GraspMonitor(scene)
    dt_s = info.dt_s or DT_S
    loop_config = LoopConfig(
        instruction=instruction,
        session_id=f"closed-loop-{job.split}-{job.index}-{uuid.uuid4().hex[:8]}",
        open_loop_steps=config.open_loop_horizon,
        dt_s=dt_s,
        plan_timeout_s=rt.plan_timeout_s,
        history_frames=max(int(info.history) - 1, 0),
        frame_stride=int(info.frame_stride) or 3,
        # a server that leaves the limits unset (proto3 zero) means the DROID contract's
        max_translation_per_step_m=info.limits.max_translation_per_step_m or MAX_TRANSLATION_PER_STEP_M,
        max_rotation_per_step_rad=info.limits.max_rotation_per_step_rad or MAX_ROTATION_PER_STEP_RAD,
        options=plan_options(seed=seed, return_heatmaps=video is not None),
    )
    env, timed, clock = _Watched(sim), TimedClient(client, rt.slowdown), ScaledClock(rt.slowdown)
    error: str | None = None
    success_run, success_step = 0, None
    heatmaps: dict[int, np.ndarray | None] = {}
    with RobotLoop(env, timed, loop_config, clock=clock, sleep=clock.sleep) as loop:
        next_tick = clock()
        while sim.steps < config.max_steps:
            try:
                record = loop.step()
                monitor.update(sim.steps)
                done = sim.is_success()
            except Exception as exc:  # noqa: BLE001 - recorded as the episode's failure
                error = _error("episode_error", exc)
                break
            if video is not None:
                shown, rows = None, 1
                if record.kind == "chunk" and record.sequence in timed.responses:
                    response = timed.responses[record.sequence]
                    if record.sequence not in heatmaps:
                        heatmaps[record.sequence] = _heatmap_array(response)
                    shown, rows = heatmaps[record.sequence], len(response.chunk)
                    label = f"{job.agent} s{record.step} plan {record.sequence} r{record.row} | {instruction}"
                else:
                    label = f"{job.agent} s{record.step} HOLD: {record.reason}"
                video.add(env.views, shown, record.row or 0, rows, label[:90], alert=record.kind == "hold")
            success_run = success_run + 1 if done else 0
            if done and success_step is None:
                success_step = sim.steps
            if success_run >= config.success_hold_steps:
                break
            next_tick += dt_s  # pace at the loop clock, as RobotLoop.run does; an overrun is not made up for
            delay = next_tick - clock()
            if delay > 0:
                clock.sleep(delay)
            else:
                next_tick = clock()
        records, plans = list(loop.records), list(loop.plans)

    success = target_held = False
    if error is None:
        success = bool(sim.is_success())
        target_held = bool(scene.in_gripper(scene.objects[0]))
    answered = [timed.wall_ms[p.sequence] for p in plans if p.sequence in timed.wall_ms]
    # kinds and confidences of the plans the robot executed: a reply that arrived after the loop ended (or was
    # dropped as too late) is in timed.responses but never moved the robot
    responses = [timed.responses[p.sequence] for p in plans if p.outcome == "used" and p.sequence in timed.responses]
    server_ms = [r.timings_ms["total"] for r in responses if "total" in r.timings_ms]
    kinds = Counter(r.proposal_kinds[r.winner] for r in responses if r.winner < len(r.proposal_kinds))
    confidences = [r.confidence for r in responses if len(r.chunk)]
    outcomes = Counter(p.outcome for p in plans)
    return {
        "split": job.split,
        "agent": job.agent,
        "index": job.index,
        "seed": seed,
        "instruction": instruction,
        "task_kind": sim.task.kind,
        "success": success and error is None,
        "first_grasp": monitor.first,
        "first_grasp_object": monitor.first_object,
        "first_grasp_step": monitor.first_step,
        "success_step": success_step,
        "steps": int(sim.steps),
        "plans": len(plans),
        "mean_plan_ms": round(statistics.fmean(answered), 3) if answered else None,
        "agent_plan_ms": round(statistics.fmean(server_ms), 3) if server_ms else None,
        "plan_kinds": dict(kinds),
        "mean_confidence": round(statistics.fmean(confidences), 4) if confidences else None,
        "failure_cause": failure_cause(success and error is None, monitor.first, target_held, error),
        "ik_failures": int(sim.ik_failures),
        "wall_s": round(time.perf_counter() - t_start, 3),
        "options": config.outcome_options(),
        "realtime": {
            "slowdown": rt.slowdown,
            "plan_timeout_s": rt.plan_timeout_s,
            "holds": sum(r.kind == "hold" for r in records),
            "plans_used": outcomes["used"],
            "plans_dropped": outcomes["dropped"],
            "plans_failed": outcomes["failed"],
            "median_round_trip_ms": round(statistics.median(answered), 1) if answered else None,
        },
    }


def run_realtime(
    out: Path,
    splits: list[str],
    agents: dict[str, int],
    config: ClosedLoopConfig | None = None,
    rt: RealtimeConfig | None = None,
    progress: bool = True,
) -> list[dict]:
    """Run ``agents`` (name -> episodes per split; only ``vidplan``) through the server; return their records.

    Resumable like the synchronous runner; episodes are stored under ``realtime_name(agent, rt.slowdown)``.
    """
    from vidplan_server.serving.local import LocalServer, connect
    from vidplan_server.serving.local import LocalServerError as DemoError

    config, rt = config or ClosedLoopConfig(), rt or RealtimeConfig()
    bad = [a for a in agents if a not in REALTIME_AGENTS]
    if bad:
        raise ClosedLoopError(
            f"--realtime runs {', '.join(REALTIME_AGENTS)} (the server's default planning), not "
            f"{', '.join(bad)}; run those without --realtime"
        )
    if rt.server is not None and config.ckpt is not None:
        raise ClosedLoopError("--ckpt configures the server started here; not with --server")
    jobs = plan_jobs(splits, {realtime_name(a, rt.slowdown): n for a, n in agents.items()})
    out.mkdir(parents=True, exist_ok=True)
    check_options(out, config)
    todo = [j for j in jobs if not episode_path(out, j).exists()]
    if todo:
        bar = tqdm(
            total=len(jobs),
            initial=len(jobs) - len(todo),
            desc="closed loop, realtime",
            unit="ep",
            disable=not progress,
        )
        try:
            with contextlib.ExitStack() as stack:  # a server started here stops on every way out
                target = rt.server
                if target is None:
                    server = stack.enter_context(
                        LocalServer(
                            out / "server.log",
                            Path(config.ckpt) if config.ckpt else None,
                            config.device,
                            rt.token,
                            rt.startup_timeout_s,
                        )
                    )
                    target = server.target
                client, info = connect(target, rt.token, started_here=rt.server is None)
                stack.enter_context(client)
                scene = SimScene()
                stack.callback(scene.close)
                for job in todo:
                    video = EpisodeVideo(config.video_scale) if job.index < config.videos else None
                    rec = run_realtime_episode(client, info, scene, job, config, rt, video)
                    rec["video"] = None
                    if video is not None and (written := video.write(video_path(out, job))):
                        rec["video"] = str(written.relative_to(out))
                    write_json_atomic(episode_path(out, job), rec)
                    bar.update(1)
        except DemoError as exc:
            raise ClosedLoopError(str(exc)) from None
        finally:
            bar.close()
    return [load_episode(episode_path(out, j)) for j in jobs]
