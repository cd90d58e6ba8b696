"""Run agents in the simulated DROID scene, episode by episode, in parallel and resumably.

One episode (split, agent, index i): the scene seed is ``episode_seed(config.seed, split, i)``, so every agent
meets the same scenes and instructions (a paired comparison). Per control step (15 Hz): observe (render the three
views, read the state); when no chunk is left or ``open_loop_horizon`` rows of the current one ran, ask the agent
for a new chunk with the last ``history_steps`` observations (oldest first; at the start padded by repeating the
first observation); execute one row with ``env.update_robot``. Synchronous: simulated time waits for the agent,
so the figures measure decisions, not this machine's speed.

Decided: an episode ends when the task has been done (``env.is_success()``) for ``success_hold_steps``
consecutive steps (default 8, about 0.5 s: the object rests in the container, or stays lifted in the gripper, and
is not merely passing through a successful state), or after ``max_steps`` (default 240, 16 s). Success is the
simulator's verdict at the last step, as the recorder judges its episodes. The agent is asked and the robot moves
in the same step, so a chunk's row 0 is executed at the step of the observation it answers.

Per episode the runner writes ``OUT/episodes/<split>/<agent>/<i>.json`` atomically (fields in
:func:`run_episode`) and, for ``i < videos``, ``OUT/videos/<split>/<agent>/<i>.mp4`` before it. Existing episode
files are skipped, so a stopped run continues where it stopped. Options that change outcomes are kept in
``OUT/run.json``; resuming with other values is refused. An agent or the simulator raising ends the episode as a
failure with that cause (``outcome.failure_cause``); it never stops the run. An agent that cannot be built
(unknown name, missing module, bad checkpoint) does stop it: that is a set-up error, not an episode's outcome.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import signal
import statistics
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm
from vidplan_client.droid import CARTESIAN_POSITION_KEY, STATE_KEY

from vidplan_server.data.schema import CAMERA_NAMES
from vidplan_server.evaluation.closed_loop.agents import Agent, AgentStep, build_agent, check_agent
from vidplan_server.evaluation.closed_loop.names import DEFAULT_SEED, SPLITS
from vidplan_server.evaluation.closed_loop.outcome import ApproachMonitor, GraspMonitor, failure_cause
from vidplan_server.evaluation.closed_loop.video import EpisodeVideo
from vidplan_server.sim.episode import episode_seed
from vidplan_server.sim.robot_env import SimEnvConfig, SimRobotEnv
from vidplan_server.sim.scene import SimScene


class ClosedLoopError(Exception):
    """The benchmark cannot run as asked; the message names the option."""


@dataclass(frozen=True)
class ClosedLoopConfig:
    seed: int = DEFAULT_SEED  # base seed of the scenes: episode i of a split is episode_seed(seed, split, i)
    open_loop_horizon: int = 8  # rows of a chunk executed before re-planning (DROID's pi0.5 client: 8)
    max_steps: int = 240  # control steps per episode at most (16 s at 15 Hz)
    history_steps: int = 16  # observations handed to the agent
    success_hold_steps: int = 8  # consecutive successful steps that end an episode early
    resolution: tuple[int, int] = (64, 64)  # (height, width) of each rendered view
    ckpt: str | None = None  # checkpoint folder of the model-based agents (None: their default)
    device: str = "cpu"  # torch device of the model-based agents
    videos: int = 2  # episodes 0..videos-1 of each (split, agent) also get an mp4
    video_scale: int = 3  # each 64x64 view shown at 192x192
    agent_options: dict = field(default_factory=dict)  # agent name -> keyword options of build_agent

    def __post_init__(self) -> None:
        for name in ("open_loop_horizon", "max_steps", "history_steps", "success_hold_steps", "video_scale"):
            if getattr(self, name) < 1:
                raise ClosedLoopError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.videos < 0:
            raise ClosedLoopError(f"--videos must be >= 0, got {self.videos}")
        h, w = self.resolution
        if h < 16 or w < 16 or h % 2 or w % 2:
            raise ClosedLoopError(f"--resolution {h}x{w}: height and width must be even and at least 16")

    def outcome_options(self) -> dict:
        """The options that change episode outcomes (a resumed run must keep them)."""
        keys = ("seed", "open_loop_horizon", "max_steps", "history_steps", "success_hold_steps", "resolution", "ckpt")
        d = asdict(self)
        out = {k: d[k] for k in keys}
        out["resolution"] = list(out["resolution"])
        return out


@dataclass(frozen=True)
class Job:
    split: str
    agent: str
    index: int


def episode_path(out: Path, job: Job) -> Path:
    return out / "episodes" / job.split / job.agent / f"{job.index}.json"


def video_path(out: Path, job: Job) -> Path:
    return out / "videos" / job.split / job.agent / f"{job.index}.mp4"


def _error(kind: str, exc: BaseException) -> str:
    return f"{kind}: {type(exc).__name__}: {exc}"[:500]


def check_step(step: AgentStep, cameras: int = len(CAMERA_NAMES)) -> np.ndarray:
    """The chunk of an agent's answer as ``(S, 7)`` float64; ValueError naming what breaks the contract."""
    if not isinstance(step, AgentStep):
        raise ValueError(f"act() must return an AgentStep, got {type(step).__name__}")
    actions = np.asarray(step.actions, dtype=np.float64)
    if actions.ndim != 2 or actions.shape[1] != 7 or actions.shape[0] < 1:
        raise ValueError(f"AgentStep.actions must be (S >= 1, 7), got shape {actions.shape}")
    if not np.all(np.isfinite(actions)):
        raise ValueError("AgentStep.actions holds NaN or inf")
    if not isinstance(step.info, dict):
        raise ValueError(f"AgentStep.info must be a dict, got {type(step.info).__name__}")
    heatmaps = step.info.get("heatmaps")
    if heatmaps is not None:
        heatmaps = np.asarray(heatmaps)
        if heatmaps.dtype != np.uint8 or heatmaps.ndim != 5 or heatmaps.shape[1] != cameras or heatmaps.shape[4] != 3:
            raise ValueError(
                f"AgentStep.info['heatmaps'] must be uint8 (H, {cameras}, h, w, 3), got "
                f"{heatmaps.dtype} {heatmaps.shape}"
            )
    return actions


def run_episode(
    env: SimRobotEnv, agent: Agent, job: Job, config: ClosedLoopConfig, video: EpisodeVideo | None = None
) -> dict:
    """Run one episode of ``agent`` on ``env`` (already configured for ``job.split``); return its record.

    Record fields: split, agent, index, seed, instruction, task_kind ("place" / "pick"), success, first_grasp
    ("target" / "other" / "none"), first_grasp_object, first_grasp_step, success_step (first step the task was
    done), steps, plans (chunks asked for), mean_plan_ms (wall time of ``act``, mean), agent_plan_ms (the agent's
    own ``info["plan_ms"]``, mean, or None), plan_kinds (``info["kind"]`` counts), mean_confidence, failure_cause
    (None on success), closest_target_m / closes / closest_close_m (:class:`~.outcome.ApproachMonitor`),
    ik_failures, wall_s (the whole episode), options (``config.outcome_options()``).
    """
    t_start = time.perf_counter()
    seed = episode_seed(config.seed, job.split, job.index)
    rec: dict = {
        "split": job.split,
        "agent": job.agent,
        "index": job.index,
        "seed": seed,
        "instruction": None,
        "task_kind": None,
    }
    error: str | None = None
    monitor: GraspMonitor | None = None
    approach = ApproachMonitor()
    plans_ms: list[float] = []
    agent_ms: list[float] = []
    confidences: list[float] = []
    kinds: Counter[str] = Counter()
    success_run, success_step = 0, None
    try:
        instruction = env.reset(seed)
        rec.update(instruction=instruction, task_kind=env.task.kind)
        monitor = GraspMonitor(env.scene)
    except Exception as exc:  # noqa: BLE001 - recorded as the episode's failure
        error = _error("episode_error", exc)
    if error is None:
        try:
            agent.reset(env, seed)
        except Exception as exc:  # noqa: BLE001
            error = _error("agent_error", exc)
    history: deque[dict] = deque(maxlen=config.history_steps)
    chunk: np.ndarray | None = None
    heatmaps: np.ndarray | None = None
    row = 0
    while error is None and env.steps < config.max_steps:
        try:
            obs = env.get_observation()
        except Exception as exc:  # noqa: BLE001
            error = _error("episode_error", exc)
            break
        history.extend([obs] * (config.history_steps if not history else 1))
        if chunk is None or row >= len(chunk) or row >= config.open_loop_horizon:
            try:
                t0 = time.perf_counter()
                step = agent.act(list(history), instruction)
                plans_ms.append(1000.0 * (time.perf_counter() - t0))
                chunk, row = check_step(step), 0
            except Exception as exc:  # noqa: BLE001
                error = _error("agent_error", exc)
                break
            info = step.info
            heatmaps = np.asarray(info["heatmaps"]) if info.get("heatmaps") is not None else None
            if "kind" in info:
                kinds[str(info["kind"])] += 1
            if info.get("plan_ms") is not None:
                agent_ms.append(float(info["plan_ms"]))
            if info.get("confidence") is not None:
                confidences.append(float(info["confidence"]))
        if video is not None:
            label = f"{job.agent} s{env.steps} p{len(plans_ms)} r{row}{' done' if success_run else ''} | {instruction}"
            video.add(obs["image"], heatmaps, row, len(chunk), label)
        try:
            target_xyz = env.scene.object_pose(env.scene.objects[0])[0]
            approach.update(obs[STATE_KEY][CARTESIAN_POSITION_KEY][:3], target_xyz, float(chunk[row][6]))
            env.update_robot(chunk[row])
            row += 1
            monitor.update(env.steps)
            done = env.is_success()
        except Exception as exc:  # noqa: BLE001
            error = _error("episode_error", exc)
            break
        success_run = success_run + 1 if done else 0
        if done and success_step is None:
            success_step = env.steps
        if success_run >= config.success_hold_steps:
            break

    success, target_held = False, False
    if error is None:
        try:
            success = bool(env.is_success())
            target_held = bool(env.scene.in_gripper(env.scene.objects[0]))
        except Exception as exc:  # noqa: BLE001
            error = _error("episode_error", exc)
            success = False
    first = monitor.first if monitor is not None else "none"
    cause = failure_cause(success and error is None, first, target_held, error)
    if video is not None and rec["instruction"] is not None:
        try:  # the final state, with the verdict
            verdict = "SUCCESS" if cause is None else f"FAILED: {cause}"
            video.add(
                env.get_observation()["image"],
                None,
                0,
                1,
                f"{job.agent} s{env.steps} {verdict}"[:80],
                alert=cause is not None,
            )
        except Exception:  # noqa: BLE001 - the video only loses its last frame; the cause is recorded already
            pass
    rec.update(
        success=success and error is None,
        first_grasp=first,
        first_grasp_object=monitor.first_object if monitor is not None else None,
        first_grasp_step=monitor.first_step if monitor is not None else None,
        success_step=success_step,
        steps=int(env.steps) if rec["instruction"] is not None else 0,
        plans=len(plans_ms),
        mean_plan_ms=round(statistics.fmean(plans_ms), 3) if plans_ms else None,
        agent_plan_ms=round(statistics.fmean(agent_ms), 3) if agent_ms else None,
        plan_kinds=dict(kinds),
        mean_confidence=round(statistics.fmean(confidences), 4) if confidences else None,
        failure_cause=cause,
        **approach.record(),
        ik_failures=int(env.ik_failures),
        wall_s=round(time.perf_counter() - t_start, 3),
        options=config.outcome_options(),
    )
    return rec


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------- workers
class _Worker:
    """One simulator and the agents built so far, reused across the episodes a process runs."""

    def __init__(self, config: ClosedLoopConfig, out: Path, parallel: bool = False) -> None:
        self.config, self.out, self.parallel = config, out, parallel
        self.scene = SimScene()
        self.agents: dict[str, Agent] = {}

    def agent(self, name: str) -> Agent:
        if name not in self.agents:
            c = self.config
            self.agents[name] = build_agent(name, c.ckpt, c.device, **c.agent_options.get(name, {}))
            if self.parallel:
                _one_thread()
        return self.agents[name]

    def run(self, job: Job) -> dict:
        agent = self.agent(job.agent)  # raises on a set-up error: that stops the run
        env = SimRobotEnv(SimEnvConfig(split=job.split, resolution=self.config.resolution), scene=self.scene)
        video = EpisodeVideo(self.config.video_scale) if job.index < self.config.videos else None
        rec = run_episode(env, agent, job, self.config, video)
        rec["video"] = None
        if video is not None:
            written = video.write(video_path(self.out, job))
            rec["video"] = str(written.relative_to(self.out)) if written else None
        write_json_atomic(episode_path(self.out, job), rec)
        return rec

    def close(self) -> None:
        self.scene.close()


_worker: _Worker | None = None


def _one_thread() -> None:
    """W processes on W cores: one intra-op thread each (torch only once an agent imported it: the expert's
    workers start without it, 2-4 s faster)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _worker_init(config: ClosedLoopConfig, out: str) -> None:
    global _worker
    _one_thread()
    devnull = os.open(os.devnull, os.O_WRONLY)  # PyBullet's banner; results come back as return values
    os.dup2(devnull, 1)
    os.close(devnull)
    _worker = _Worker(config, Path(out), parallel=True)


def _work(job: Job) -> dict:
    return _worker.run(job)


# ------------------------------------------------------------------------------------------- the run
def check_options(out: Path, config: ClosedLoopConfig) -> None:
    """Refuse to resume ``out`` with outcome options other than those it was run with; record them otherwise."""
    path = out / "run.json"
    wanted = config.outcome_options()
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ClosedLoopError(f"--out {out}: cannot read {path.name} ({exc})") from None
        diff = [
            f"--{k.replace('_', '-')} {stored.get(k)!r} there, {v!r} now"
            for k, v in wanted.items()
            if stored.get(k) != v
        ]
        if diff:
            raise ClosedLoopError(
                f"--out {out} holds episodes run with other options ({'; '.join(diff)}); use "
                "the same options to resume, or another --out"
            )
        return
    write_json_atomic(path, wanted)


def plan_jobs(splits: list[str], agents: dict[str, int]) -> list[Job]:
    """Jobs ordered by episode index first, so every prefix of a run holds paired episodes of all agents."""
    for s in splits:
        if s not in SPLITS:
            raise ClosedLoopError(f"--split {s!r}: choose from {', '.join(SPLITS)}")
    top = max(agents.values(), default=0)
    return [Job(s, a, i) for i in range(top) for s in splits for a, n in agents.items() if i < n]


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """While inside, SIGTERM raises SystemExit in the main thread instead of killing the process outright, so a
    worker pool's ``with`` block terminates its workers: a killed run leaves no orphaned episode processes behind
    (its finished episodes are already on disk). Elsewhere than the main thread, a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_closed_loop(
    out: Path,
    splits: list[str],
    agents: dict[str, int],
    config: ClosedLoopConfig | None = None,
    workers: int = 1,
    progress: bool = True,
) -> list[dict]:
    """Run ``agents`` (name -> episodes per split) on ``splits``; return the records of all those episodes.

    Episodes already in ``out`` are read, not re-run. ``workers > 1`` runs episodes in that many spawned
    processes, each with its own simulator and one torch thread.
    """
    config = config or ClosedLoopConfig()
    if workers < 1:
        raise ClosedLoopError(f"--workers must be >= 1, got {workers}")
    for name in agents:
        try:
            check_agent(name)
        except Exception as exc:
            raise ClosedLoopError(f"--{exc}") from None
    jobs = plan_jobs(splits, agents)
    out.mkdir(parents=True, exist_ok=True)
    check_options(out, config)
    todo = [j for j in jobs if not episode_path(out, j).exists()]
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="closed loop", unit="ep", disable=not progress)
    done: Counter[str] = Counter()
    wins: Counter[str] = Counter()

    def tick(rec: dict) -> None:
        key = f"{rec['split']}/{rec['agent']}"
        done[key] += 1
        wins[key] += bool(rec["success"])
        bar.update(1)
        bar.set_postfix_str(" ".join(f"{k} {wins[k]}/{done[k]}" for k in sorted(done)))

    try:
        if workers == 1 or len(todo) <= 1:
            worker = _Worker(config, out)
            try:
                for job in todo:
                    tick(worker.run(job))
            finally:
                worker.close()
        elif todo:
            ctx = mp.get_context("spawn")  # fresh interpreters: no forked PyBullet or torch state
            pool_ctx = ctx.Pool(min(workers, len(todo)), initializer=_worker_init, initargs=(config, str(out)))
            with sigterm_exits(), pool_ctx as pool:
                for rec in pool.imap_unordered(_work, todo):
                    tick(rec)
    finally:
        bar.close()
    return [load_episode(episode_path(out, j)) for j in jobs]


def seed_folder(out: Path, seed: int, seeds: list[int]) -> Path:
    """Where the episodes of base seed ``seed`` live in a run over ``seeds``: ``out`` itself for one seed (the
    layout of a plain run), ``out/seed_<S>`` for each of several."""
    return out if len(seeds) == 1 else out / f"seed_{seed}"


def run_closed_loop_seeds(
    out: Path,
    splits: list[str],
    agents: dict[str, int],
    seeds: list[int],
    config: ClosedLoopConfig | None = None,
    workers: int = 1,
    progress: bool = True,
) -> list[dict]:
    """:func:`run_closed_loop` once per base seed (``config.seed`` replaced), the records of all of them pooled.

    Decided: one run's 50 episodes per split give a success rate within about +-14 points, and a choice tuned on one
    set of scenes (a temperature, a checkpoint) looks better on those scenes than on others. Several base seeds give
    more, and other, scenes for the same command. Each seed keeps its own folder (:func:`seed_folder`, its own
    ``run.json``), so one seed's run resumes on its own and a seed can be added later. Episode seeds differ between
    base seeds, so the report's pairing by (index, episode seed) stays within one scene.
    """
    config = config or ClosedLoopConfig()
    if not seeds:
        raise ClosedLoopError("--seed: give at least one base seed")
    if len(set(seeds)) != len(seeds):
        raise ClosedLoopError(f"--seed: each base seed once, got {','.join(map(str, seeds))}")
    records: list[dict] = []
    for seed in seeds:
        folder = seed_folder(out, seed, seeds)
        records += run_closed_loop(folder, splits, agents, replace(config, seed=seed), workers, progress)
    return records


def load_episode(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ClosedLoopError(f"{path}: unreadable episode record ({exc}); delete it to re-run that episode") from None


def load_all_episodes(out: Path) -> list[dict]:
    """Every episode record under ``out/episodes`` and ``out/seed_*/episodes`` (all splits, agents and base seeds
    ever run there); an episode found twice (same split, agent and scene seed) counts once."""
    paths = sorted((out / "episodes").glob("*/*/*.json")) + sorted(out.glob("seed_*/episodes/*/*/*.json"))
    records: dict[tuple, dict] = {}
    for path in paths:
        rec = load_episode(path)
        records.setdefault((rec["split"], rec["agent"], rec["seed"]), rec)
    return list(records.values())
