"""``vidplan demo``: one simulated episode driven through the thin robot client against a planning server.

The simulated scene (:class:`~vidplan_server.sim.robot_env.SimRobotEnv`, DROID's ``RobotEnv`` interface) is
driven by the very code a real robot runs: ``vidplan_client``'s :class:`~vidplan_client.VidPlanClient` and
:class:`~vidplan_client.RobotLoop` (15 Hz, plans requested in the background, hold when there is no valid chunk).
The server is ``--server ADDR``, or a ``vidplan serve`` the demo starts itself as a subprocess on free localhost
ports (bundled checkpoint unless ``--ckpt``), waits until its gRPC health says SERVING, and stops with SIGTERM
at the end, also on errors and Ctrl-C. Its log goes to ``OUT/server.log``.

Wall time and simulated time. The simulator advances one control period (1/15 s) per command and never on its own;
the loop's clock is the wall clock divided by ``--slowdown`` (``sleep`` multiplies by it). So one simulated second
takes ``slowdown`` wall seconds, the robot commands 15 times per simulated second, and a plan that takes L wall
seconds costs the robot L / slowdown simulated seconds (L / slowdown * 15 commands, holding or executing the
previous chunk meanwhile). ``--slowdown 1`` is real time: the robot sees the server's true latency, as a real robot
next to this machine would. Decided: the default is 5, which lets a CPU server (~0.5-1 s per plan at its defaults on
2 cores) stand in for a 5 times faster (GPU) one; at real time on such a CPU every plan arrives after its open-loop
horizon and the robot only holds (measured), which demonstrates the safety behaviour but not planning.
Plan deadlines (``--plan-timeout``) are in simulated seconds and scaled the same way. Simulated and loop time agree
as long as one cycle (render three views, encode them, step the physics) fits into 1/15 s * slowdown of wall
time; a cycle that does not is not made up for (the simulated robot then lags the loop clock), and the report
counts such overruns. Timestamps sent to the server are loop-clock seconds.

Writes to ``--out``: ``demo.mp4`` (15 fps: a header line, the three camera views side by side, and below them the
uncertainty heatmaps of the plan being executed, for the predicted frame of the row being executed; each view
``--view-scale`` times the simulator's size: 576 x 408 pixels at 64 x 64 views and scale 3), ``report.json``
(also printed) and, with a server of its own, ``server.log``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vidplan_server.argtypes import non_negative_int, positive_float, positive_int
from vidplan_server.data.video_frames import compose_frame

DESCRIPTION = (
    "Run one simulated DROID episode (PyBullet scene, three cameras, 15 Hz) through the thin robot client "
    "(vidplan_client: VidPlanClient + RobotLoop) against a planning server: the one at --server, or a `vidplan "
    "serve` started here on free localhost ports and stopped with SIGTERM at the end. Writes OUT/demo.mp4 (the "
    "three views and the executed plan's uncertainty heatmaps), OUT/report.json (success as the simulator judges "
    "it, steps, plans, latency, holds; also printed) and OUT/server.log. Time: the simulator steps once per "
    "command; the loop clock is wall time / --slowdown, so a plan taking L wall seconds costs the robot "
    "L / slowdown simulated seconds."
)

SERVER_STOP_S = 60.0  # SIGTERM lets in-flight plans finish; past this the server is killed


class DemoError(Exception):
    """The demo cannot run; the message names the option or the part that failed."""


# ---------------------------------------------------------------------------------------- options


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``vidplan demo``."""
    p.add_argument("--server", default=None, metavar="ADDR",
                   help="host:port of a running `vidplan serve` (gRPC); default: start one here for this episode "
                   "on free localhost ports and stop it at the end")
    p.add_argument("--out", type=Path, default=Path("outputs/demo"), metavar="DIR",
                   help="folder for demo.mp4, report.json and server.log (created; default outputs/demo)")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="seed of the scene and task (same seed, same scene) and of the planner's noise (default 0)")
    p.add_argument("--steps", type=positive_int, default=150, metavar="N",
                   help="control steps of the episode at 15 Hz (default 150, i.e. 10 simulated seconds)")
    p.add_argument("--instruction", default=None, metavar="TEXT",
                   help="language task sent to the planner (default: the sampled task's own, e.g. 'put the red "
                   "cube in the tray'); success is always judged on the sampled task")
    p.add_argument("--split", choices=("train", "val", "ood"), default="train",
                   help="task sampling: train / val objects and colours, or ood (novel targets, more "
                   "distractors) (default train)")
    p.add_argument("--open-loop", type=positive_int, default=8, metavar="K",
                   help="rows of a chunk executed at most, counted from the observation it answers (default 8 "
                   "of 15, about 0.53 s)")
    p.add_argument("--proposals", type=positive_int, default=None, metavar="N",
                   help="candidate chunks the planner rolls out per plan (default: the server's, 12)")
    p.add_argument("--refine-iters", type=non_negative_int, default=None, metavar="I",
                   help="gradient refinement steps on the winner, 0 = selection only (default: the server's, 3)")
    p.add_argument("--flow-steps", type=positive_int, default=None, metavar="K",
                   help="flow-map steps per rollout (default: the server's, 1)")
    p.add_argument("--plan-timeout", type=positive_float, default=1.0, metavar="SECONDS",
                   help="deadline of one plan request in simulated seconds; the robot holds or executes the "
                   "previous chunk meanwhile (default 1.0)")
    p.add_argument("--slowdown", type=positive_float, default=5.0, metavar="FACTOR",
                   help="wall seconds per simulated second: 1 = real time (the robot sees the server's true "
                   "latency; use it with a GPU server); the default 5 makes a CPU server look 5 times faster, "
                   "as a GPU would be (default 5)")
    p.add_argument("--view-scale", type=positive_int, default=3, metavar="S",
                   help="video: each view and heatmap enlarged S times (default 3: 192x192 per 64x64 view)")
    p.add_argument("--token", default=None,
                   help="bearer token for the server (default: the VIDPLAN_TOKEN environment variable; a server "
                   "started here gets the same)")
    p.add_argument("--ckpt", type=Path, default=None, metavar="DIR",
                   help="checkpoint folder for the server started here (default: the bundled checkpoint); not "
                   "with --server")
    p.add_argument("--device", default=None,
                   help="torch device of the server started here, e.g. cpu or cuda (default cpu); not with --server")
    p.add_argument("--startup-timeout", type=positive_float, default=180.0, metavar="SECONDS",
                   help="how long the server started here may take to load and report SERVING (default 180)")


# ---------------------------------------------------------------------------------------- time
class ScaledClock:
    """Loop clock = wall clock / ``slowdown``, from 0 at creation; ``sleep`` sleeps ``slowdown`` times longer."""

    def __init__(self, slowdown: float = 1.0, wall: Callable[[], float] = time.monotonic,
                 wall_sleep: Callable[[float], None] = time.sleep) -> None:
        self.slowdown, self._wall, self._wall_sleep = slowdown, wall, wall_sleep
        self._start = wall()

    def __call__(self) -> float:
        return (self._wall() - self._start) / self.slowdown

    def sleep(self, seconds: float) -> None:
        self._wall_sleep(seconds * self.slowdown)


class TimedClient:
    """The loop's plan client: scales deadlines from loop seconds to wall seconds; times each call (wall)."""

    def __init__(self, client, slowdown: float) -> None:
        self.client, self.slowdown = client, slowdown
        self.wall_ms: dict[int, float] = {}  # sequence -> round trip of an answered call
        self.responses: dict[int, object] = {}  # sequence -> the answer (the video shows its heatmaps)
        self._lock = threading.Lock()

    def plan(self, request, timeout_s: float | None = None):
        start = time.perf_counter()
        response = self.client.plan(request, timeout_s=None if timeout_s is None else timeout_s * self.slowdown)
        with self._lock:
            self.wall_ms[request.sequence] = 1000 * (time.perf_counter() - start)
            self.responses[request.sequence] = response
        return response


class _RecordingEnv:
    """Passes calls to the simulated env; keeps the views of every observation the loop took, in order."""

    def __init__(self, env) -> None:
        self.env = env
        self.views: list[dict[str, np.ndarray]] = []

    def get_observation(self) -> dict:
        obs = self.env.get_observation()
        self.views.append(obs["image"])
        return obs

    def update_robot(self, action, action_space: str = "cartesian_position", blocking: bool = False):
        return self.env.update_robot(action, action_space=action_space, blocking=blocking)


# ---------------------------------------------------------------------------------------- server
def _free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 now (held together while picking, so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
    except OSError:
        return ""


class LocalServer:
    """``vidplan serve`` as a subprocess on free localhost ports; a context manager that always stops it."""

    def __init__(self, log_path: Path, ckpt: Path | None = None, device: str | None = None,
                 token: str | None = None, startup_timeout_s: float = 180.0) -> None:
        self.log_path, self.ckpt, self.device, self.token = log_path, ckpt, device, token
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen | None = None
        self.target = ""
        self.exit_code: int | None = None

    def __enter__(self) -> LocalServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        grpc_port, http_port = _free_ports(2)
        cmd = [sys.executable, "-m", "vidplan_server.cli", "serve", "--host", "127.0.0.1",
               "--grpc-port", str(grpc_port), "--http-port", str(http_port), "--log-level", "info"]
        if self.ckpt is not None:
            cmd += ["--ckpt", str(self.ckpt)]
        if self.device is not None:
            cmd += ["--device", self.device]
        env = dict(os.environ)
        if self.token:
            env["VIDPLAN_TOKEN"] = self.token
        # Leave one core to the simulated robot, whose 15 Hz cycle must not wait for the planner's threads.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) - 1)))
        self.target = f"127.0.0.1:{grpc_port}"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        self._wait_serving()

    def _wait_serving(self) -> None:
        import grpc
        from vidplan_client import ClientConfig, VidPlanClient

        deadline = time.monotonic() + self.startup_timeout_s
        with VidPlanClient(ClientConfig(target=self.target, token=self.token, max_attempts=1)) as client:
            while True:
                code = self.proc.poll()
                if code is not None:
                    raise DemoError(f"vidplan serve exited with status {code} during start-up; the end of "
                                    f"{self.log_path}:\n{_tail(self.log_path)}")
                try:
                    if client.health(timeout_s=1.0) == "SERVING":
                        return
                except grpc.RpcError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise DemoError(f"--startup-timeout {self.startup_timeout_s:g}: vidplan serve did not report "
                                    f"SERVING in time; the end of {self.log_path}:\n{_tail(self.log_path)}")
                time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM (graceful: in-flight plans finish), then wait; kill only if it does not stop."""
        proc = self.proc
        if proc is None or self.exit_code is not None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(SERVER_STOP_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.exit_code = proc.returncode


def connect(target: str, token: str | None, started_here: bool):
    """Client of ``target`` after checking health and reading GetInfo; DemoError names --server otherwise."""
    import grpc
    from vidplan_client import ClientConfig, VidPlanClient

    where = "--server " + target if not started_here else "the server started here (" + target + ")"
    client = VidPlanClient(ClientConfig(target=target, token=token, info_timeout_s=5.0))
    try:
        status = client.health(timeout_s=5.0)
        if status != "SERVING":
            raise DemoError(f"{where}: health says {status}, not SERVING")
        info = client.info(timeout_s=10.0)
    except grpc.RpcError as exc:
        client.close()
        details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
        raise DemoError(f"{where}: not reachable as a VidPlan gRPC server ({exc.code().name}: {details})") from None
    except BaseException:
        client.close()
        raise
    return client, info


# ---------------------------------------------------------------------------------------- video
def heatmaps_by_frame(response) -> dict[int, dict[str, np.ndarray]]:
    from vidplan_client.convert import decode_image

    out: dict[int, dict[str, np.ndarray]] = {}
    for item in response.heatmaps:
        out.setdefault(int(item.frame), {})[item.image.camera] = decode_image(item.image)
    return out


def _video_frames(views: list[dict[str, np.ndarray]], records, responses: dict[int, object], scale: int,
                  cameras: tuple[str, ...]) -> np.ndarray:
    """Frames of the episode: step k shows the views the loop saw and the heatmaps of the plan it executed."""
    decoded: dict[int, dict[int, dict[str, np.ndarray]]] = {}
    shown: tuple[int, int] | None = None  # (sequence, frame) of the last heatmap shown; holds keep showing it
    frames = []
    for rec, seen in zip(records, views, strict=True):
        if rec.kind == "chunk" and rec.sequence in responses:
            response = responses[rec.sequence]
            frame = min(rec.row // max(response.frame_stride, 1), max(len(response.uncertainty) - 1, 0))
            shown = (rec.sequence, frame)
            label = f"step {rec.step:3d}  plan {rec.sequence} row {rec.row:2d}  frame {frame}"
        else:
            label = f"step {rec.step:3d}  HOLD: {rec.reason}"[:90]
        heatmaps = None
        if shown is not None:
            seq, frame = shown
            if seq not in decoded:
                decoded[seq] = heatmaps_by_frame(responses[seq])
            heatmaps = decoded[seq].get(frame)
        frames.append(compose_frame(seen, heatmaps, label, rec.kind == "hold", scale, cameras))
    return np.stack(frames)


# ---------------------------------------------------------------------------------------- the episode
def run_episode(client, info, args: argparse.Namespace, out: Path) -> dict:
    """Drive one simulated episode through RobotLoop against ``client``; write the video; return the report."""
    from vidplan_client import CAMERA_NAMES, LoopConfig, RobotLoop, plan_options

    from vidplan_server.sim.robot_env import SimEnvConfig, SimRobotEnv
    from vidplan_server.data.video import encode_video

    sim = SimRobotEnv(SimEnvConfig(split=args.split, resolution=(info.image_height or 64, info.image_width or 64)))
    try:
        task_instruction = sim.reset(args.seed)
        instruction = args.instruction or task_instruction
        dt_s = info.dt_s or 1.0 / 15.0
        config = LoopConfig(
            instruction=instruction, session_id=f"demo-{args.seed}-{uuid.uuid4().hex[:8]}",
            open_loop_steps=args.open_loop, dt_s=dt_s, plan_timeout_s=args.plan_timeout,
            history_frames=max(int(info.history) - 1, 0), frame_stride=int(info.frame_stride) or 3,
            # the server's own per-step limits guard the loop's row choice (DROID's when it sends none)
            max_translation_per_step_m=info.limits.max_translation_per_step_m or 0.075,
            max_rotation_per_step_rad=info.limits.max_rotation_per_step_rad or 0.15,
            options=plan_options(num_proposals=args.proposals, refine_iters=args.refine_iters,
                                 flow_steps=args.flow_steps, seed=args.seed, return_heatmaps=True))
        env, timed = _RecordingEnv(sim), TimedClient(client, args.slowdown)
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
    frames = _video_frames(env.views, records, responses, args.view_scale, tuple(CAMERA_NAMES))
    encode_video(frames, video, fps=round(1.0 / dt_s))
    answered = [timed.wall_ms[p.sequence] for p in plans if p.outcome in ("used", "dropped")
                and p.sequence in timed.wall_ms]
    server_ms = [timed.responses[p.sequence].timings_ms["total"] for p in plans
                 if p.sequence in timed.responses and "total" in timed.responses[p.sequence].timings_ms]
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


def run_demo(args: argparse.Namespace) -> dict:
    """Start or reach the server, run the episode, stop the server; returns the report (also written)."""
    if args.server is not None and (args.ckpt is not None or args.device is not None):
        raise DemoError("--ckpt and --device configure the server the demo starts itself; not with --server")
    if args.ckpt is not None and not args.ckpt.is_dir():
        raise DemoError(f"--ckpt {args.ckpt}: checkpoint folder does not exist")
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DemoError(f"--out {out}: cannot create the folder ({exc})") from None
    token = args.token if args.token is not None else (os.environ.get("VIDPLAN_TOKEN") or None)
    wall_start = time.monotonic()
    server = None
    with contextlib.ExitStack() as stack:  # the server stops on every way out, Ctrl-C included
        if args.server is None:
            server = stack.enter_context(
                LocalServer(out / "server.log", args.ckpt, args.device, token, args.startup_timeout))
            print(f"vidplan demo: started vidplan serve at {server.target} (pid {server.proc.pid}, "
                  f"log {out / 'server.log'})", file=sys.stderr)
        target = args.server or server.target
        client, info = connect(target, token, started_here=server is not None)
        with client:
            report = run_episode(client, info, args, out)
    report.update(server=target, server_started_here=server is not None,
                  server_pid=server.proc.pid if server is not None else None,
                  server_exit_code=server.exit_code if server is not None else None,
                  total_wall_time_s=round(time.monotonic() - wall_start, 3))
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def run(args: argparse.Namespace) -> int:
    """Handler of ``vidplan demo``."""
    from vidplan_server.cli import CliError

    try:
        report = run_demo(args)
    except DemoError as exc:
        raise CliError(str(exc)) from None
    print(json.dumps(report, indent=2))
    print(f"wrote {report['video']} and {args.out / 'report.json'}", file=sys.stderr)
    if report["plans_used"] * 2 < report["plans_sent"]:
        print(f"vidplan demo: most plans came too late or not at all (median {report['median_plan_latency_ms']} ms "
              f"for a {args.open_loop}-row horizon at --slowdown {args.slowdown:g}); the robot held instead. Try "
              "--slowdown 5 (a server 5 times faster), fewer --proposals / --refine-iters, or a larger --open-loop.",
              file=sys.stderr)
    return 0
