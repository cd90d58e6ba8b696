"""Roll out one simulated episode: sample a task, run the scripted expert, record every step.

Per step t the recorder renders the three views and reads the robot state (observation t),
asks the expert for action t, and applies it. The episode ends when the expert's script is
done (plus a few settling steps) or at ``max_steps``; success is then read from the simulator.
Everything random comes from one ``numpy`` generator seeded with the episode seed, so the same
seed gives the same episode.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vidplan_server.data.schema import CAMERA_NAMES, Episode, GroundTruth
from vidplan_server.robot.panda import matrix_to_pose
from vidplan_server.sim.expert import FAILURE_MODES, ExpertConfig, ScriptedExpert
from vidplan_server.sim.scene import SimScene
from vidplan_server.sim.tasks import DistractorCounts, is_success, sample_task

SETTLE_STEPS = 4


@dataclass(frozen=True)
class EpisodeConfig:
    split: str = "train"
    resolution: tuple[int, int] = (64, 64)  # (height, width) per view
    imperfect_fraction: float = 0.2  # share of episodes run with a failure mode
    place_fraction: float = 0.7  # share of "put ... in ..." tasks; the rest are "pick up ..."
    max_steps: int = 240  # 16 s at 15 Hz
    distractors: DistractorCounts = field(default_factory=DistractorCounts)
    expert: ExpertConfig = field(default_factory=ExpertConfig)


def episode_seed(base_seed: int, split: str, index: int) -> int:
    """Seed of episode ``index``: distinct per split so val / ood never replay train scenes."""
    offset = {"train": 0, "val": 1_000_003, "ood": 2_000_003}[split]
    return int(np.random.SeedSequence([base_seed, offset, index]).generate_state(1)[0])


def run_episode(seed: int, config: EpisodeConfig, scene: SimScene | None = None, render: bool = True) -> Episode:
    """Simulate one episode. Pass a `SimScene` to reuse its PyBullet client across episodes."""
    rng = np.random.default_rng(seed)
    own_scene = scene is None
    scene = scene or SimScene()
    try:
        spec, task = sample_task(rng, config.split, config.place_fraction, config.distractors)
        mode = None
        if rng.random() < config.imperfect_fraction:
            mode = FAILURE_MODES[int(rng.integers(len(FAILURE_MODES)))]
        scene.reset(spec)
        rest_z = float(scene.object_pose(scene.objects[0])[0][2])
        expert = ScriptedExpert(scene, task, rng, mode=mode, config=config.expert)
        steps = _record(scene, expert, config, render)
        success = is_success(scene, task, rest_z)
    finally:
        if own_scene:
            scene.close()

    T = len(steps["action"])
    timed_out = steps["timed_out"]
    is_last = np.zeros(T, bool)
    is_last[-1] = True
    reward = np.zeros(T, np.float32)
    reward[-1] = float(success)
    h, w = config.resolution
    images = {c: np.stack(steps["images"][c]) if render else np.zeros((T, h, w, 3), np.uint8) for c in CAMERA_NAMES}
    masks = {c: np.stack(steps["masks"][c]) if render else np.zeros((T, h, w), bool) for c in CAMERA_NAMES}
    return Episode(
        images=images,
        cartesian_position=np.stack(steps["cartesian"]).astype(np.float32),
        gripper_position=np.array(steps["gripper"], np.float32)[:, None],
        joint_position=np.stack(steps["joints"]).astype(np.float32),
        action=np.stack(steps["action"]).astype(np.float32),
        action_joint_position=np.stack(steps["action_joints"]).astype(np.float32),
        language_instruction=task.instruction,
        is_first=np.arange(T) == 0,
        is_last=is_last,
        is_terminal=is_last & (not timed_out),
        reward=reward,
        discount=np.ones(T, np.float32),
        success=bool(success),
        ground_truth=GroundTruth(
            object_names=[o.description for o in scene.objects],
            target_index=0,
            object_poses=np.stack(steps["object_poses"]).astype(np.float32),
            target_masks=masks,
        ),
        metadata={
            "seed": int(seed),
            "split": config.split,
            "task_kind": task.kind,
            "failure_mode": mode or "",
            "timed_out": bool(timed_out),
            "container": scene.container.asset.name,
            "ik_failures": int(steps["ik_failures"]),
        },
    )


def _record(scene: SimScene, expert: ScriptedExpert, config: EpisodeConfig, render: bool) -> dict:
    h, w = config.resolution
    target_body = scene.objects[0].body
    out: dict = {k: [] for k in ("cartesian", "gripper", "joints", "action", "action_joints", "object_poses")}
    out["images"] = {c: [] for c in CAMERA_NAMES}
    out["masks"] = {c: [] for c in CAMERA_NAMES}
    out["ik_failures"] = 0
    script = expert.actions()
    last = None
    settle = SETTLE_STEPS
    for _ in range(config.max_steps):
        q = scene.joint_positions()
        tcp_T = scene.kin.fk(q)
        out["joints"].append(q)
        out["cartesian"].append(matrix_to_pose(tcp_T))
        out["gripper"].append(scene.gripper_position())
        out["object_poses"].append(scene.object_poses())
        if render:
            images, seg = scene.render(h, w, tcp_T)
            for c in CAMERA_NAMES:
                out["images"][c].append(images[c])
                out["masks"][c].append(seg[c] == target_body)
        action = next(script, None)
        if action is None:
            if settle == 0 or last is None:
                out["timed_out"] = False
                return _drop_last_observation(out, render)
            settle -= 1
            action = last
        last = action
        out["action"].append(action)
        out["ik_failures"] += int(not scene.apply_action(action))
        out["action_joints"].append(scene.q_cmd.copy())
    out["timed_out"] = True
    return out


def _drop_last_observation(out: dict, render: bool) -> dict:
    """The script ended after the final observation was taken; keep observation/action pairs aligned."""
    for k in ("cartesian", "gripper", "joints", "object_poses"):
        out[k].pop()
    if render:
        for c in CAMERA_NAMES:
            out["images"][c].pop()
            out["masks"][c].pop()
    return out
