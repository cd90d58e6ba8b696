"""The simulator as a perfect world model: rebuild a recorded step, execute candidate chunks, render them.

Used by the planning-signal diagnostic to isolate the learned world model: the same proposals the planner
would roll out in its model are executed in the simulator from the recorded state, and the rendered frames
are scored instead of the predicted ones.

Rebuilding step K of a recorded episode: the scene is sampled from the episode's seed and split exactly as
the recorder sampled it (:func:`~vidplan_server.sim.tasks.sample_task` is the first use of the episode's
generator), then the arm's joints, the fingers and every object's pose are set to the values recorded at K
(velocities zero). A grasped object would not be held by a reset, so the diagnostic only uses approach steps
(gripper open, target away from the hand). Each proposal starts from a saved PyBullet state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vidplan_server.data.schema import CAMERA_NAMES, Episode
from vidplan_server.robot.panda import FINGER_MAX_WIDTH_M
from vidplan_server.sim.bullet import p
from vidplan_server.sim.robot_env import SimEnvConfig, SimRobotEnv
from vidplan_server.sim.scene import ARM_JOINTS, FINGER_JOINTS


@dataclass
class OracleRollout:
    """Rendered frames at the model's knots. frames (N, H, V, h, w, 3) uint8; masks (N, H, V, h, w) int32 body
    ids of the segmentation (compare with :attr:`SimOracle.bodies`)."""

    frames: np.ndarray
    segmentation: np.ndarray


class SimOracle:
    """One PyBullet scene reused across steps and episodes."""

    def __init__(self) -> None:
        self.env: SimRobotEnv | None = None
        self.bodies: list[int] = []

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None

    def load(self, episode: Episode, step: int) -> None:
        """Rebuild ``episode`` at ``step`` (needs the recorder's metadata ``seed`` and ``split``)."""
        meta = episode.metadata
        if "seed" not in meta or "split" not in meta:
            raise ValueError("the episode has no simulator seed/split metadata: record it with `vidplan sim record`")
        if episode.ground_truth is None:
            raise ValueError("the episode has no ground-truth object poses")
        split = str(meta["split"])
        if self.env is None or self.env.config.split != split:
            self.close()
            self.env = SimRobotEnv(SimEnvConfig(split=split, resolution=episode.resolution))
        env = self.env
        env.reset(int(meta["seed"]))
        scene = env.scene
        c = scene.client
        q = np.asarray(episode.joint_position[step], dtype=np.float64)
        for j, v in zip(ARM_JOINTS, q, strict=True):
            p.resetJointState(scene.robot, j, float(v), 0.0, physicsClientId=c)
        g = float(np.asarray(episode.gripper_position[step]).reshape(-1)[0])
        finger = FINGER_MAX_WIDTH_M * (1.0 - g) / 2.0
        for j in FINGER_JOINTS:
            p.resetJointState(scene.robot, j, finger, 0.0, physicsClientId=c)
        poses = episode.ground_truth.object_poses[step]
        if len(poses) != len(scene.objects):
            raise ValueError(
                f"the rebuilt scene has {len(scene.objects)} objects, the recording {len(poses)}: "
                "the episode was recorded with other scene settings"
            )
        for obj, pose in zip(scene.objects, poses, strict=True):
            p.resetBasePositionAndOrientation(obj.body, pose[:3].tolist(), pose[3:].tolist(), physicsClientId=c)
            p.resetBaseVelocity(obj.body, [0, 0, 0], [0, 0, 0], physicsClientId=c)
        scene.q_cmd = q.copy()
        scene.gripper_cmd = g
        self.bodies = [o.body for o in scene.objects]

    def rollout(self, actions: np.ndarray, frame_stride: int) -> OracleRollout:
        """Execute each chunk (N, S, 7) from the loaded state; render after every ``frame_stride``-th step."""
        env = self.env
        if env is None:
            raise RuntimeError("call load() first")
        scene = env.scene
        c = scene.client
        state = p.saveState(physicsClientId=c)
        q_cmd, g_cmd = scene.q_cmd.copy(), scene.gripper_cmd
        h, w = env.config.resolution
        frames, segs = [], []
        try:
            for chunk in actions:
                p.restoreState(stateId=state, physicsClientId=c)
                scene.q_cmd, scene.gripper_cmd = q_cmd.copy(), g_cmd
                f_run, s_run = [], []
                for s, action in enumerate(chunk):
                    scene.apply_action(np.asarray(action, dtype=np.float64))
                    if (s + 1) % frame_stride == 0:
                        images, seg = scene.render(h, w)
                        f_run.append(np.stack([images[v] for v in CAMERA_NAMES]))
                        s_run.append(np.stack([seg[v] for v in CAMERA_NAMES]))
                frames.append(np.stack(f_run))
                segs.append(np.stack(s_run))
        finally:
            p.restoreState(stateId=state, physicsClientId=c)
            p.removeState(state, physicsClientId=c)
            scene.q_cmd, scene.gripper_cmd = q_cmd, g_cmd
        return OracleRollout(np.stack(frames), np.stack(segs).astype(np.int32))
