"""DAgger for the behaviour-cloning policy: run it in the simulator, let the scripted expert label what it saw.

Why: the policy learned from the expert's demonstrations alone (``vidplan train policy``) drifts into states the
expert never visits -- hovering beside the object, a gripper closed on nothing, a grasp a few centimetres off --
and does not know how to leave them (compounding error; in the closed loop it reached toward an object and then
hovered, 7 of 10 ``val`` failures were "no grasp"). DAgger (Ross, Gordon & Bagnell 2011) fixes that with data
from the learner's own state distribution, labelled by the expert.

One episode (a ``train``-split scene: the policy never trains on ``val`` / ``ood``): the scene of seed
``episode_seed(seed, "train", i)``; per control step, observe (three views, state) and ask the expert what it
would do from here (:meth:`ScriptedExpert.resume`, noise-free, the next ``chunk`` actions); that (views, state,
instruction, expert chunk) is one training sample. The robot executes chunks of the **policy**, re-planned every
``open_loop_horizon`` steps as in the closed-loop benchmark, except that with probability ``beta`` a chunk is the
expert's instead (DAgger's mixture policy: it keeps episodes reaching the later phases -- transport, release --
whose states the policy alone rarely reaches yet). The episode ends after ``success_hold_steps`` successful steps
or ``max_steps``.

The policy's chunks are drawn at ``temperature`` (the flow's starting noise's standard deviation), by default the
planner's ``PlannerConfig.policy_temperature`` 0.5, so the states DAgger visits are the ones the deployed policy
visits (folders collected before the option existed were drawn at 1.0 and resume as such).

Decided: ``beta`` 0.3, every step labelled, episodes seeded apart from the recordings (seeds 0-2) and the
closed-loop benchmark (1000): base seed 500.

Output, resumable: ``OUT/dagger.json`` (the options and the policy checkpoint; resuming with other options is
refused) and one ``OUT/episodes/<i>.npz`` per episode, written atomically: ``frames`` (T, V, H, W, 3) uint8 in
``CAMERA_NAMES`` order, ``state`` (T, 7) cartesian_position + gripper, ``chunk`` (T, S, 7) the expert's absolute
actions, ``instruction``, ``success`` (the executed episode's, for the summary only), ``seed``, and ``target_pos``
(T, 3), the instructed object's position (m, base frame) at each step, the label of the policy's auxiliary
where-is-the-object head (folders written before it was stored read back as unknown: NaN).
:func:`dagger_samples` reads a folder back as :class:`~vidplan_server.training.policy_stage.PolicyData` for
``vidplan train policy --extra-data``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vidplan_server.data.errors import DatasetError
from vidplan_server.data.npz import write_npz_atomic
from vidplan_server.data.schema import CAMERA_NAMES
from vidplan_server.sim.episode import episode_seed
from vidplan_server.sim.expert import ExpertConfig, ScriptedExpert
from vidplan_server.sim.robot_env import SimEnvConfig, SimRobotEnv
from vidplan_server.sim.scene import SimScene

MANIFEST = "dagger.json"
FALLEN_Z = -0.05  # m: an instructed object this far below the table top has fallen off it


class DaggerError(Exception):
    """DAgger collection cannot run as asked; the message names the option."""


@dataclass(frozen=True)
class DaggerConfig:
    seed: int = 500  # base seed of the train-split scenes
    beta: float = 0.3  # probability that an executed chunk is the expert's
    temperature: float = 0.5  # std of the policy's starting noise (the planner's policy_temperature)
    open_loop_horizon: int = 8  # policy rows executed before re-planning (as the closed-loop benchmark)
    max_steps: int = 240
    success_hold_steps: int = 8
    resolution: tuple[int, int] = (64, 64)

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta <= 1.0:
            raise DaggerError(f"--beta must be in [0, 1], got {self.beta}")
        if not 0.0 < self.temperature <= 4.0:
            raise DaggerError(f"--temperature must be in (0, 4], got {self.temperature}")
        for name in ("open_loop_horizon", "max_steps", "success_hold_steps"):
            if getattr(self, name) < 1:
                raise DaggerError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")


LABEL_EXPERT = ExpertConfig(pos_noise_m=0.0, rot_noise_rad=0.0)


def expert_chunk(env: SimRobotEnv, steps: int) -> np.ndarray:
    """The noise-free expert's next ``steps`` actions (steps, 7) from the simulator's current state; the last
    action repeated when its script ends sooner."""
    expert = ScriptedExpert(env.scene, env.task, np.random.default_rng(0), mode=None, config=LABEL_EXPERT)
    script = expert.resume(done=env.is_success())
    out: list[np.ndarray] = []
    for action in script:
        out.append(action)
        if len(out) == steps:
            break
    if not out:
        raise RuntimeError("the expert's resumed script yielded no action")
    out.extend([out[-1]] * (steps - len(out)))
    return np.stack(out).astype(np.float32)


class PolicyActor:
    """The bundle's policy on one observation: (S, 7) absolute chunk, one noise draw from its own generator."""

    def __init__(self, ckpt: Path | str, seed: int, temperature: float = 1.0) -> None:
        import torch

        from vidplan_server.models.policy import load_policy

        self.torch = torch
        self.policy = load_policy(ckpt).eval()
        self.generator = torch.Generator().manual_seed(seed)
        self.temperature = temperature

    def __call__(self, obs: dict, instruction: str) -> np.ndarray:
        torch, pol = self.torch, self.policy
        frames = np.stack([obs["image"][c] for c in CAMERA_NAMES])
        images = torch.as_tensor(resize_views(frames, pol.config.image_size)).permute(0, 3, 1, 2)[None].float() / 255
        rs = obs["robot_state"]
        state = torch.tensor(
            [[*rs["cartesian_position"], float(np.clip(rs["gripper_position"], 0, 1))]], dtype=torch.float32
        )
        noise = self.temperature * torch.randn((1, 1, pol.config.chunk, 7), generator=self.generator)
        with torch.no_grad():
            return pol.sample(images, state, [instruction], noise)[0, 0].double().numpy()


def resize_views(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """frames (V, H, W, 3) uint8 -> (V, h, w, 3) at ``size`` = (h, w) (area interpolation when shrinking)."""
    import cv2

    if frames.shape[1:3] == tuple(size):
        return frames
    h, w = size
    interp = cv2.INTER_AREA if frames.shape[1] * frames.shape[2] > h * w else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, (w, h), interpolation=interp) for f in frames])


def run_dagger_episode(env: SimRobotEnv, actor, seed: int, config: DaggerConfig, chunk: int) -> dict:
    """One episode (module docstring) with ``actor(obs, instruction) -> (S, 7)``; returns the npz fields."""
    rng = np.random.default_rng([seed, 17])  # the beta coin, apart from the scene's stream
    instruction = env.reset(seed)
    frames, states, labels, positions = [], [], [], []
    plan: np.ndarray | None = None
    row, success_run, success = 0, 0, False
    while env.steps < config.max_steps:
        obs = env.get_observation()
        label = expert_chunk(env, chunk)
        rs = obs["robot_state"]
        frames.append(np.stack([obs["image"][c] for c in CAMERA_NAMES]))
        states.append([*rs["cartesian_position"], rs["gripper_position"]])
        labels.append(label)
        positions.append(env.scene.object_pose(env.scene.objects[0])[0])
        if plan is None or row >= min(len(plan), config.open_loop_horizon):
            plan = label if rng.random() < config.beta else actor(obs, instruction)
            row = 0
        env.update_robot(plan[row])
        row += 1
        success = env.is_success()
        success_run = success_run + 1 if success else 0
        if success_run >= config.success_hold_steps:
            break
    return {
        "frames": np.stack(frames).astype(np.uint8),
        "state": np.asarray(states, dtype=np.float32),
        "chunk": np.stack(labels),
        "instruction": np.array(instruction),
        "success": np.array(bool(success)),
        "seed": np.array(seed, dtype=np.uint64),
        "target_pos": np.asarray(positions, dtype=np.float32),
    }


def episode_file(out: Path, index: int) -> Path:
    return out / "episodes" / f"{index:05d}.npz"


# ------------------------------------------------------------------------------------------- workers
_state: dict = {}


def _init(ckpt: str, config: DaggerConfig, out: str, parallel: bool) -> None:
    if parallel:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = "1"
        devnull = os.open(os.devnull, os.O_WRONLY)  # PyBullet's banner; results come back as return values
        os.dup2(devnull, 1)
        os.close(devnull)
    scene = SimScene()
    _state.update(scene=scene, ckpt=ckpt, config=config, out=Path(out))
    if parallel and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _work(index: int) -> tuple[int, bool, int]:
    config: DaggerConfig = _state["config"]
    seed = episode_seed(config.seed, "train", index)
    actor = PolicyActor(_state["ckpt"], seed, config.temperature)
    if "torch" in sys.modules and os.environ.get("OMP_NUM_THREADS") == "1":
        sys.modules["torch"].set_num_threads(1)
    env = SimRobotEnv(SimEnvConfig(split="train", resolution=config.resolution), scene=_state["scene"])
    arrays = run_dagger_episode(env, actor, seed, config, actor.policy.config.chunk)
    write_npz_atomic(episode_file(_state["out"], index), arrays)
    return index, bool(arrays["success"]), len(arrays["frames"])


def collect(
    ckpt: Path, out: Path, episodes: int, config: DaggerConfig | None = None, workers: int = 1, progress: bool = True
) -> dict:
    """Make ``out`` hold ``episodes`` DAgger episodes of the policy in bundle ``ckpt``; only missing ones run.

    Returns a summary: episodes, new (run now), successes and samples of the new ones, seconds.
    """
    from vidplan_server.models.checkpoint import CheckpointError, read_manifest

    config = config or DaggerConfig()
    if episodes < 1 or workers < 1:
        raise DaggerError(f"--episodes and --workers must be >= 1, got {episodes} and {workers}")
    try:
        if "policy" not in read_manifest(ckpt)["modules"]:
            raise DaggerError(f"--ckpt {ckpt}: the bundle has no policy module (`vidplan train policy` first)")
    except CheckpointError as exc:
        raise DaggerError(f"--ckpt {ckpt}: {exc}") from None
    out.mkdir(parents=True, exist_ok=True)
    wanted = {**asdict(config), "resolution": list(config.resolution), "ckpt": str(Path(ckpt).resolve())}
    manifest = out / MANIFEST
    if manifest.exists():
        stored = {"temperature": 1.0, **json.loads(manifest.read_text())}  # the noise before the option existed
        diff = [f"{k}: {stored.get(k)!r} there, {v!r} now" for k, v in wanted.items() if stored.get(k) != v]
        if diff:
            raise DaggerError(
                f"--out {out} holds episodes collected with other options ({'; '.join(diff)}); use "
                "the same options to resume, or another --out"
            )
    else:
        manifest.write_text(json.dumps(wanted, indent=1) + "\n")
    todo = [i for i in range(episodes) if not episode_file(out, i).exists()]
    bar = tqdm(total=episodes, initial=episodes - len(todo), desc="dagger", unit="ep", disable=not progress)
    wins = samples = 0
    t0 = time.perf_counter()

    def tick(result: tuple[int, bool, int]) -> None:
        nonlocal wins, samples
        wins += result[1]
        samples += result[2]
        bar.update(1)
        bar.set_postfix(success=f"{wins}/{bar.n - (episodes - len(todo))}", samples=samples)

    try:
        if workers == 1 or len(todo) <= 1:
            _init(str(ckpt), config, str(out), parallel=False)
            try:
                for i in todo:
                    tick(_work(i))
            finally:
                _state["scene"].close()
        elif todo:
            ctx = mp.get_context("spawn")
            with ctx.Pool(
                min(workers, len(todo)), initializer=_init, initargs=(str(ckpt), config, str(out), True)
            ) as pool:
                for result in pool.imap_unordered(_work, todo):
                    tick(result)
    finally:
        bar.close()
    return {
        "episodes": episodes,
        "new": len(todo),
        "successes": wins,
        "samples": samples,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def dagger_samples(folder: Path, image_size: tuple[int, int], chunk: int, progress: bool = True):
    """Every labelled step of a DAgger folder as ``PolicyData`` (frames resized to ``image_size``; chunks cut or
    padded to ``chunk`` rows by repeating the last), except steps where the instructed object has fallen below the
    table top (``FALLEN_Z``): knocked off the table, it cannot be picked, and the expert's label (reach for it) and
    the auxiliary position target (metres away) would only teach noise (1 of 300 episodes in a round at
    temperature 0.5; its position loss was 10^4 times the usual)."""
    from vidplan_server.training.policy_stage import PolicyData

    files = sorted((Path(folder) / "episodes").glob("*.npz"))
    if not (Path(folder) / MANIFEST).exists() or not files:
        raise DatasetError(f"{folder}: not a DAgger folder with episodes (`vidplan sim dagger` writes them)")
    frames, states, chunks, texts, positions, instructions = [], [], [], [], [], {}
    for f in tqdm(files, desc=f"load {Path(folder).name}", disable=not progress, leave=False):
        with np.load(f) as z:
            fr = z["frames"]
            if fr.shape[2:4] != tuple(image_size):
                fr = np.stack([resize_views(x, image_size) for x in fr])
            c = z["chunk"][:, np.minimum(np.arange(chunk), z["chunk"].shape[1] - 1)]
            pos = z["target_pos"] if "target_pos" in z.files else np.full((len(fr), 3), np.nan, np.float32)
            keep = ~(pos[:, 2] < FALLEN_Z)  # NaN (unknown) is kept
            frames.append(fr[keep])
            states.append(z["state"][keep])
            chunks.append(c[keep])
            texts.append(np.full(int(keep.sum()), instructions.setdefault(str(z["instruction"]), len(instructions))))
            positions.append(pos[keep])
    return PolicyData(
        np.concatenate(frames),
        np.concatenate(states).astype(np.float32),
        np.concatenate(chunks).astype(np.float32),
        np.concatenate(texts),
        list(instructions),
        target_pos=np.concatenate(positions).astype(np.float32),
    )
