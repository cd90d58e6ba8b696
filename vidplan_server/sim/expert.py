"""Scripted expert: waypoints + IK with action noise, and deliberate failure modes.

The expert plans one segment at a time from the current simulator state (so it reacts to where
the object actually is), interpolates the TCP pose between waypoints at a bounded speed, and
emits DROID ``cartesian_position`` + gripper actions at 15 Hz with Gaussian noise.

Failure modes for imperfect episodes (so the data holds failures for the value head):

* ``wrong_target``: grasps and moves a distractor instead of the named object;
* ``drop``: opens the gripper during transport;
* ``miss``: grasps 4-6 cm beside the object;
* ``timeout``: stalls mid-task until the episode's step limit cuts it off.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from vidplan_server.data.schema import DT_S
from vidplan_server.robot.panda import matrix_to_pose
from vidplan_server.sim.scene import PlacedObject, SimScene
from vidplan_server.sim.tasks import Task

FAILURE_MODES = ("wrong_target", "drop", "miss", "timeout")
RESUME_APPROACH_SLACK_M = 0.03  # resume(): a hand this far above the approach height counts as there
SQUARE_TOLERANCE = 0.05  # _grasp_yaw(): horizontal half-extents this close (relative) make a square object


@dataclass(frozen=True)
class ExpertConfig:
    speed_mps: float = 0.22
    angular_speed_rps: float = 1.2
    pos_noise_m: float = 0.002
    rot_noise_rad: float = 0.01
    approach_height_m: float = 0.10
    carry_height_m: float = 0.20
    close_steps: int = 8
    open_steps: int = 6


def top_down(yaw: float) -> np.ndarray:
    """Rotation matrix of a TCP pointing straight down with the given yaw."""
    return Rotation.from_euler("xyz", [np.pi, 0.0, yaw]).as_matrix()


class ScriptedExpert:
    def __init__(
        self,
        scene: SimScene,
        task: Task,
        rng: np.random.Generator,
        mode: str | None = None,
        config: ExpertConfig | None = None,
    ) -> None:
        if mode is not None and mode not in FAILURE_MODES:
            raise ValueError(f"mode must be None or one of {FAILURE_MODES}, got {mode!r}")
        self.scene, self.task, self.rng, self.mode = scene, task, rng, mode
        self.cfg = config or ExpertConfig()
        self.obj: PlacedObject = scene.objects[0]
        if mode == "wrong_target" and len(scene.objects) > 1:
            self.obj = scene.objects[1 + int(rng.integers(len(scene.objects) - 1))]
        self._pose = scene.kin.fk(scene.joint_positions())
        self._gripper = 0.0
        self._yaw: float | None = None
        self._under_way = False  # resume(): the next move starts at speed (no ease-in)

    # ------------------------------------------------------------------ helpers
    def _noisy(self, T: np.ndarray, gripper: float) -> np.ndarray:
        pose = matrix_to_pose(T)
        pose[:3] += self.rng.normal(0.0, self.cfg.pos_noise_m, 3)
        pose[3:] += self.rng.normal(0.0, self.cfg.rot_noise_rad, 3)
        pose[3:] = (pose[3:] + np.pi) % (2 * np.pi) - np.pi
        return np.concatenate([pose, [gripper]]).astype(np.float32)

    def _move(
        self, target: np.ndarray, gripper: float | None = None, speed: float | None = None
    ) -> Iterator[np.ndarray]:
        """Interpolate from the last commanded pose to ``target`` ``(4, 4)`` at bounded speed."""
        g = self._gripper if gripper is None else gripper
        start = self._pose
        dist = np.linalg.norm(target[:3, 3] - start[:3, 3])
        rots = Rotation.from_matrix(np.stack([start[:3, :3], target[:3, :3]]))
        angle = (rots[0].inv() * rots[1]).magnitude()
        v = speed or self.cfg.speed_mps
        n = max(1, int(np.ceil(max(dist / (v * DT_S), angle / (self.cfg.angular_speed_rps * DT_S)))))
        slerp = Slerp([0.0, 1.0], rots)
        under_way, self._under_way = self._under_way, False
        for i in range(1, n + 1):
            s = i / n
            # Ease in and out; a resumed script's first move eases out only (resume()).
            s = np.sin(0.5 * np.pi * s) if under_way else 0.5 - 0.5 * np.cos(np.pi * s)
            T = np.eye(4)
            T[:3, :3] = slerp([s]).as_matrix()[0]
            T[:3, 3] = (1 - s) * start[:3, 3] + s * target[:3, 3]
            self._pose, self._gripper = T, g
            yield self._noisy(T, g)

    def _hold(self, n: int, gripper: float) -> Iterator[np.ndarray]:
        self._under_way = False  # holding still: the next move starts from rest
        for _ in range(n):
            self._gripper = gripper
            yield self._noisy(self._pose, gripper)

    def _pose_at(self, xy: np.ndarray, z: float, yaw: float) -> np.ndarray:
        T = np.eye(4)
        T[:3, :3] = top_down(yaw)
        T[:3, 3] = [xy[0], xy[1], z]
        return T

    def _grasp_yaw(self, obj: PlacedObject) -> float:
        """Yaw that closes the fingers across the object's shorter horizontal side, the nearest such yaw to the
        current wrist angle.

        Decided: an object whose two horizontal half-extents agree within ``SQUARE_TOLERANCE`` (the cube, the
        lego brick, the ball, some shapes) has four equally good yaws a quarter turn apart, not two, and the
        nearest of the four is taken. Before, only the two yaws half a turn apart counted, so on a square object
        the label depended on which horizontal axis was called x: two scenes that look the same gave labels a
        quarter turn apart, which a policy imitating them cannot tell apart. The bundled policy was trained on
        labels from before; fine-tuning it on new ones did not help (README, "The expert's grasp yaw on square
        objects").
        """
        _, quat = self.scene.object_pose(obj)
        obj_yaw = Rotation.from_quat(quat).as_euler("xyz")[2]
        hx, hy = float(obj.half_extents[0]), float(obj.half_extents[1])
        short_axis = obj_yaw if hx <= hy else obj_yaw + np.pi / 2
        yaw = short_axis + np.pi / 2  # fingers close along the TCP's y axis
        period = np.pi / 2 if abs(hx - hy) <= SQUARE_TOLERANCE * max(hx, hy) else np.pi
        current = Rotation.from_matrix(self._pose[:3, :3]).as_euler("xyz")[2]
        return float(current + ((yaw - current + period / 2) % period - period / 2))

    # ------------------------------------------------------------------ script
    def actions(self) -> Iterator[np.ndarray]:
        """Yield ``(7,)`` actions until the script ends (the caller enforces the step limit)."""
        yield from self._reach_and_grasp()
        yield from self._transport()

    def resume(self, done: bool = False) -> Iterator[np.ndarray]:
        """The nominal script continued from the simulator's current state: the expert's answer to a state it
        did not make (DAgger relabelling, :mod:`vidplan_server.training.dagger`).

        Decided phases, read from the simulator: when the task is ``done``, rise above the current position
        and hold (gripper as it is for a pick, open after a place); when the target is between both fingers,
        or it hangs in the air within 5 cm of the hand, hold the grasp a few steps if it still rests on the table
        (the fingers may be closing), then the transport part of the script
        (lift, carry, release); when the hand is at the grasp (within 1.5 cm of the target's centre line and of
        the grasp height), close and lift; otherwise the reach-and-grasp part, which opens the gripper on the way
        (letting go of a distractor) and skips the move to the approach pose when the hand is already over the
        target (within 1.5 cm) and below that height plus ``RESUME_APPROACH_SLACK_M``, so it descends straight
        away and turns to the grasp yaw while descending. The first move eases out only: it starts at speed.
        """
        if self.mode is not None:
            raise ValueError("resume() continues the nominal script; construct the expert with mode=None")
        # The first move starts at speed, as the recorded script is mid-move in most states a policy passes
        # through: eased in from rest, the label's third row had covered 10 % of its 15-row path in transit
        # against 33 % in the recordings, and a policy trained on both learned two speeds for one state.
        self._under_way = True
        if done:
            grip = 1.0 if self.task.kind == "pick" else 0.0
            up = self._pose.copy()
            up[2, 3] = max(up[2, 3], self.cfg.carry_height_m)
            yield from self._move(up, gripper=grip, speed=0.15)
            while True:
                yield from self._hold(1, grip)
        pos, _ = self.scene.object_pose(self.obj)
        lifted = pos[2] - self.obj.half_extents[2] > 0.01 and np.linalg.norm(pos - self._pose[:3, 3]) < 0.05
        # Held: both fingers touch it, or it hangs in the air at the hand (contacts flicker during a carry).
        if self.scene.in_gripper(self.obj) or lifted:
            self._gripper = 1.0
            if not lifted:  # still on the table: the fingers may be closing
                yield from self._hold(self.cfg.close_steps // 2, 1.0)
            yield from self._transport(resumed=True)
            return
        pos, _ = self.scene.object_pose(self.obj)
        top = pos[2] + self.obj.half_extents[2]
        tcp = self._pose[:3, 3]
        over = np.linalg.norm(tcp[:2] - pos[:2]) < 0.015
        if over and tcp[2] < max(pos[2], 0.018) + 0.015:  # at the grasp: close, then lift
            self._yaw = float(np.arctan2(self._pose[1, 0], self._pose[0, 0]))
            yield from self._hold(self.cfg.close_steps, 1.0)
            yield from self._transport(resumed=True)
            return
        # Over the target and at most RESUME_APPROACH_SLACK_M above the approach height: descend straight away,
        # turning to the grasp yaw on the way down. Without the slack, a hand a few mm above the approach height
        # got "turn in place first" (up to pi/2 at the angular speed, 15+ steps without descending): a policy
        # that imitates it, re-plans every 8 steps and turns imperfectly can hover there for good (the bundled
        # policy's commonest failure: gripper open, 6-10 cm above the object, never closed).
        near_approach = tcp[2] < top + self.cfg.approach_height_m + RESUME_APPROACH_SLACK_M
        yield from self._reach_and_grasp(skip_approach=over and near_approach)
        yield from self._transport(resumed=True)

    def _reach_and_grasp(self, skip_approach: bool = False) -> Iterator[np.ndarray]:
        cfg, scene, obj = self.cfg, self.scene, self.obj
        pos, _ = scene.object_pose(obj)
        yaw = self._yaw = self._grasp_yaw(obj)
        xy = pos[:2].copy()
        if self.mode == "miss":
            angle = self.rng.uniform(0, 2 * np.pi)
            xy += self.rng.uniform(0.04, 0.06) * np.array([np.cos(angle), np.sin(angle)])
        top = pos[2] + obj.half_extents[2]
        if not skip_approach:
            yield from self._move(self._pose_at(xy, top + cfg.approach_height_m, yaw), gripper=0.0)
        if self.mode == "timeout":
            while True:  # hesitate above the object until the step limit ends the episode
                yield from self._hold(1, 0.0)
        pos, _ = scene.object_pose(obj)
        if self.mode != "miss":
            xy = pos[:2]
        grasp_z = max(pos[2], 0.018)
        yield from self._move(self._pose_at(xy, grasp_z, yaw), gripper=0.0, speed=0.12)
        yield from self._hold(cfg.close_steps, 1.0)
        yield from self._move(self._pose_at(xy, cfg.carry_height_m, yaw), speed=0.15)

    def _transport(self, resumed: bool = False) -> Iterator[np.ndarray]:
        """From a grasp at carry height: finish the pick or the place. ``resumed`` (:meth:`resume`, the object in
        the gripper anywhere): lift to the carry height first, except over the container (within 2 cm), where the
        release descent continues."""
        cfg, scene, obj = self.cfg, self.scene, self.obj
        # The grasp's yaw; resumed mid-grasp, the hand's own (its x axis is (cos yaw, sin yaw) when top-down).
        yaw = self._yaw if self._yaw is not None else float(np.arctan2(self._pose[1, 0], self._pose[0, 0]))
        c_pos, _ = scene.container_pose()
        over_container = np.linalg.norm(self._pose[:2, 3] - c_pos[:2]) < 0.02 and self.task.kind == "place"
        if resumed and not over_container and self._pose[2, 3] < cfg.carry_height_m - 0.01:
            lift = self._pose.copy()
            lift[2, 3] = cfg.carry_height_m
            yield from self._move(lift, gripper=1.0, speed=0.15)
        if self.task.kind == "pick":
            if self.mode == "drop":
                yield from self._hold(cfg.open_steps, 0.0)
            yield from self._hold(10, self._gripper)
            return

        above = self._pose_at(c_pos[:2], cfg.carry_height_m, yaw)
        if self.mode == "drop":
            mid = self._pose.copy()
            frac = self.rng.uniform(0.3, 0.7)
            mid[:3, 3] = (1 - frac) * self._pose[:3, 3] + frac * above[:3, 3]
            yield from self._move(mid)
            yield from self._hold(cfg.open_steps, 0.0)
        if not over_container:
            yield from self._move(above)
        release_z = scene.container.asset.rim_height_m + obj.half_extents[2] + 0.04
        yield from self._move(self._pose_at(c_pos[:2], release_z, yaw), speed=0.12)
        yield from self._hold(cfg.open_steps, 0.0)
        yield from self._move(self._pose_at(c_pos[:2], cfg.carry_height_m + 0.05, yaw), speed=0.15)
