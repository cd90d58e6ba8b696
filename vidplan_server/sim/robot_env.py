"""The simulated scene behind DROID's ``RobotEnv`` interface, so the robot loop runs unchanged against it.

``SimRobotEnv`` wraps a :class:`~vidplan_server.sim.scene.SimScene` and a task sampled as
:func:`~vidplan_server.sim.episode.run_episode` samples it:

- ``reset(seed)`` samples a scene and an instruction (same seed -> same scene) and returns the instruction;
- ``get_observation()`` renders the three views and reads the robot state into DROID's dict layout
  (built by the client's :func:`vidplan_client.droid.observation_dict`, the owner of DROID's keys)::

      {"image": {camera name: (H, W, 3) uint8 RGB},
       "robot_state": {"joint_positions": (7,) rad, "cartesian_position": (6,) m / rad, "gripper_position": float},
       "timestamp": {"step": int, "sim_time_s": float}}

- ``update_robot(action, action_space="cartesian_position", blocking=False)`` executes one 15 Hz control step
  (``SimScene.apply_action``: IK from the commanded configuration, then physics);
- ``is_success()`` judges the task from the simulator state, as the recorder does at the end of an episode.

Time: the simulation advances only in ``update_robot``, one control period per call. ``clock()`` returns that
simulated time and ``sleep()`` does nothing. So ``RobotLoop(env, client, config, clock=env.clock,
sleep=env.sleep)`` runs as fast as the simulator allows; planning latency costs no simulated time only when the
loop's plan calls run inline (an executor that answers in the asking cycle, as the tests use). With the loop's
default worker thread, the simulation runs on while a plan is computed, as a real robot would; ``vidplan demo``
instead ties simulated to wall time through a scaled clock (``--slowdown``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from vidplan_client.contract import ACTION_SPACE, CAMERA_NAMES, DT_S  # the only action space the scene executes
from vidplan_client.droid import observation_dict

from vidplan_server.robot.panda import matrix_to_pose
from vidplan_server.sim.scene import SimScene
from vidplan_server.sim.tasks import DistractorCounts, Task, is_success, sample_task


@dataclass(frozen=True)
class SimEnvConfig:
    split: str = "train"  # "train", "val" or "ood" task sampling
    resolution: tuple[int, int] = (64, 64)  # (height, width) of each rendered view
    place_fraction: float = 0.7  # share of "put ... in ..." tasks; the rest are "pick up ..."
    distractors: DistractorCounts = field(default_factory=DistractorCounts)


class SimRobotEnv:
    """DROID ``RobotEnv``-style adapter of the simulated scene. Call :meth:`reset` before anything else."""

    def __init__(self, config: SimEnvConfig | None = None, scene: SimScene | None = None) -> None:
        self.config = config or SimEnvConfig()
        self._own_scene = scene is None
        self.scene = scene or SimScene()
        self.task: Task | None = None
        self.steps = 0  # control steps executed since reset
        self.ik_failures = 0  # steps whose target IK could not reach (the arm kept its previous target)
        self._rest_z = 0.0

    @property
    def instruction(self) -> str:
        return self._task().instruction

    def reset(self, seed: int) -> str:
        """Sample and build a new scene and task from ``seed``; returns the instruction."""
        rng = np.random.default_rng(seed)
        spec, self.task = sample_task(rng, self.config.split, self.config.place_fraction, self.config.distractors)
        self.scene.reset(spec)
        self._rest_z = float(self.scene.object_pose(self.scene.objects[0])[0][2])
        self.steps = self.ik_failures = 0
        return self.task.instruction

    def get_observation(self) -> dict:
        self._task()
        q = self.scene.joint_positions()
        tcp_T = self.scene.kin.fk(q)
        h, w = self.config.resolution
        images, _ = self.scene.render(h, w, tcp_T)
        return observation_dict(
            {c: images[c] for c in CAMERA_NAMES},
            q,
            matrix_to_pose(tcp_T),
            float(self.scene.gripper_position()),
            timestamp={"step": self.steps, "sim_time_s": self.clock()},
        )

    def update_robot(self, action, action_space: str = ACTION_SPACE, blocking: bool = False) -> dict:
        """Execute one control step toward ``action`` (7,): TCP pose (m, rad) + gripper [0, 1].

        ``blocking`` is accepted for DROID compatibility; every call runs exactly one control period.
        Returns DROID-style action info: ``{"ik_success": bool}``.
        """
        self._task()
        if action_space != ACTION_SPACE:
            raise ValueError(f"the simulated robot takes action_space={ACTION_SPACE!r}, got {action_space!r}")
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (7,) or not np.all(np.isfinite(action)):
            raise ValueError(f"action must be 7 finite numbers (pose 6 + gripper), got {action.shape}")
        ok = bool(self.scene.apply_action(action))
        self.steps += 1
        self.ik_failures += int(not ok)
        return {"ik_success": ok}

    def is_success(self) -> bool:
        """Whether the task is done now (place: target in the container and released; pick: lifted and held)."""
        return is_success(self.scene, self._task(), self._rest_z)

    def clock(self) -> float:
        """Simulated time since reset, s."""
        return self.steps * DT_S

    def sleep(self, seconds: float) -> None:
        """No-op: simulated time advances in :meth:`update_robot` only."""

    def close(self) -> None:
        if self._own_scene:
            self.scene.close()

    def _task(self) -> Task:
        if self.task is None:
            raise RuntimeError("call reset(seed) first")
        return self.task
