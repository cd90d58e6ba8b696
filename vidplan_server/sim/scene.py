"""PyBullet scene of a DROID-like tabletop: Panda, table, container, target and distractors.

Frames and units: everything is in the robot base frame, metres and radians. The table top is
at z = 0 (as on a DROID setup, where the base is mounted level with the table), so the real
robot's workspace limits apply unchanged.

Control: `SimScene.apply_action` takes one DROID ``cartesian_position`` action (absolute TCP
pose + gripper in [0, 1]), solves IK with the shared `PandaKinematics` from the current joint
configuration, and runs ``SUBSTEPS`` physics steps of 1/240 s with joint position control,
i.e. one 15 Hz control step.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pybullet_data

from vidplan_server.robot.panda import Q_HOME, PandaKinematics, gripper_width_to_position
from vidplan_server.sim.assets import CONTAINER_COLOURS, ContainerAsset, ObjectAsset
from vidplan_server.sim.bullet import p
from vidplan_server.sim.cameras import CameraRig, render_views

PHYSICS_HZ = 240
SUBSTEPS = PHYSICS_HZ // 15
ARM_JOINTS = list(range(7))
FINGER_JOINTS = (9, 10)
TCP_LINK = 11
ARM_FORCES = [87.0] * 4 + [12.0] * 3
FINGER_FORCE_N = 60.0
TABLE_TOP_Z = 0.0


@dataclass
class PlacedObject:
    body: int
    asset: ObjectAsset
    colour: str
    half_extents: np.ndarray  # (3,) local half sizes of the collision AABB at identity pose

    @property
    def description(self) -> str:
        return f"{self.colour} {self.asset.name}"


@dataclass
class PlacedContainer:
    body: int
    asset: ContainerAsset
    colour: str


@dataclass
class ObjectSpec:
    asset: ObjectAsset
    colour: str
    rgb: tuple[float, float, float]
    xy: tuple[float, float]
    yaw: float
    urdf_id: int | None = None


@dataclass
class SceneSpec:
    objects: list[ObjectSpec]  # objects[0] is the target
    container: ContainerAsset
    container_colour: str
    container_xy: tuple[float, float]
    container_yaw: float
    rig: CameraRig
    q_start: np.ndarray


def light_panda_urdf() -> Path:
    """The pybullet_data Panda with its collision meshes as visuals, written once to a cache dir.

    The visual meshes hold ~100k triangles and PyBullet's CPU renderer spends most of its time on
    them; the collision meshes (~3k triangles) have nearly the same silhouette at 64x64 to 180x320
    and render about 8x faster (64x64 with shadows: 50 -> 6.5 ms per view on one core).
    Kinematics and dynamics are untouched (same URDF otherwise).
    """
    src = Path(pybullet_data.getDataPath()) / "franka_panda" / "panda.urdf"
    text = src.read_text()
    text = re.sub(r"package://meshes/visual/(\w+)\.obj", r"package://meshes/collision/\1.obj", text)
    text = text.replace("package://meshes/", f"{src.parent / 'meshes'}/")
    name = f"panda_light_{hashlib.sha1(text.encode()).hexdigest()[:10]}.urdf"
    candidates = [
        Path(os.environ.get("VIDPLAN_CACHE", Path.home() / ".cache" / "vidplan")),
        Path(tempfile.gettempdir()) / "vidplan",
    ]
    for cache in candidates:
        out = cache / name
        if out.exists():
            return out
        try:
            cache.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(text)
            os.replace(tmp, out)  # atomic: concurrent workers never read a half-written file
            return out
        except OSError:
            continue  # read-only home: try the next location
    raise OSError(f"cannot write the render URDF to any of {candidates}")


class SimScene:
    """One PyBullet DIRECT client holding one episode's world."""

    def __init__(self, kinematics: PandaKinematics | None = None) -> None:
        self.client = p.connect(p.DIRECT)
        p.setAdditionalSearchPath(pybullet_data.getDataPath(), physicsClientId=self.client)
        self.kin = kinematics or PandaKinematics()
        self.objects: list[PlacedObject] = []
        self.container: PlacedContainer | None = None
        self.rig: CameraRig | None = None
        self.q_cmd = Q_HOME.copy()

    def close(self) -> None:
        if self.client >= 0:
            p.disconnect(self.client)
            self.client = -1

    # ------------------------------------------------------------------ building
    def reset(self, spec: SceneSpec) -> None:
        c = self.client
        p.resetSimulation(physicsClientId=c)
        p.setGravity(0, 0, -9.81, physicsClientId=c)
        p.setTimeStep(1.0 / PHYSICS_HZ, physicsClientId=c)
        p.setPhysicsEngineParameter(numSolverIterations=60, deterministicOverlappingPairs=1, physicsClientId=c)
        self._build_table()
        self.robot = p.loadURDF(str(light_panda_urdf()), [0, 0, 0], useFixedBase=True, physicsClientId=c)
        for j in FINGER_JOINTS:
            p.changeDynamics(self.robot, j, lateralFriction=2.0, spinningFriction=0.01, physicsClientId=c)
        for j, q in zip(ARM_JOINTS, spec.q_start, strict=True):
            p.resetJointState(self.robot, j, q, physicsClientId=c)
        for j in FINGER_JOINTS:
            p.resetJointState(self.robot, j, 0.04, physicsClientId=c)
        self.q_cmd = np.asarray(spec.q_start, dtype=np.float64).copy()
        self.gripper_cmd = 0.0
        self.container = self._build_container(spec)
        self.objects = [self._load_object(o) for o in spec.objects]
        self.rig = spec.rig
        # Let objects settle before the first observation.
        self._hold_and_step(60)

    def _build_table(self) -> None:
        c = self.client
        half = [0.6, 0.8, 0.02]
        col = p.createCollisionShape(p.GEOM_BOX, halfExtents=half, physicsClientId=c)
        vis = p.createVisualShape(p.GEOM_BOX, halfExtents=half, rgbaColor=[0.74, 0.66, 0.56, 1], physicsClientId=c)
        self.table = p.createMultiBody(0, col, vis, [0.45, 0.0, TABLE_TOP_Z - half[2]], physicsClientId=c)
        floor_vis = p.createVisualShape(
            p.GEOM_BOX, halfExtents=[3, 3, 0.01], rgbaColor=[0.35, 0.35, 0.38, 1], physicsClientId=c
        )
        p.createMultiBody(0, -1, floor_vis, [0, 0, -0.75], physicsClientId=c)

    def _build_container(self, spec: SceneSpec) -> PlacedContainer:
        c = self.client
        asset = spec.container
        rgb = CONTAINER_COLOURS[spec.container_colour]
        orn = p.getQuaternionFromEuler([0, 0, spec.container_yaw])
        pos = [spec.container_xy[0], spec.container_xy[1], TABLE_TOP_Z]
        if asset.kind == "urdf":
            body = p.loadURDF(asset.urdf, pos, orn, useFixedBase=True, globalScaling=asset.scale, physicsClientId=c)
            p.changeVisualShape(body, -1, rgbaColor=[*rgb, 1], physicsClientId=c)
        else:
            body = self._box_container(pos, orn, asset, rgb)
        return PlacedContainer(body, asset, spec.container_colour)

    def _box_container(self, pos, orn, asset: ContainerAsset, rgb) -> int:
        """An open box from five slabs (pybullet_data has no bowl or bin with a usable collision mesh)."""
        c = self.client
        inner, wall, h = asset.inner_half_extent_m, 0.01, asset.rim_height_m
        parts = [([inner + wall, inner + wall, 0.005], [0, 0, 0.005])]
        for sx, sy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            half = [wall, inner + wall, h / 2] if sx else [inner + wall, wall, h / 2]
            parts.append((half, [sx * (inner + wall / 2), sy * (inner + wall / 2), h / 2]))
        cols = [p.createCollisionShape(p.GEOM_BOX, halfExtents=hx, physicsClientId=c) for hx, _ in parts]
        viss = [
            p.createVisualShape(p.GEOM_BOX, halfExtents=hx, rgbaColor=[*rgb, 1], physicsClientId=c) for hx, _ in parts
        ]
        n = len(parts) - 1
        base_off = parts[0][1]
        return p.createMultiBody(
            baseMass=0,
            baseCollisionShapeIndex=cols[0],
            baseVisualShapeIndex=viss[0],
            basePosition=[pos[0], pos[1], pos[2] + base_off[2]],
            baseOrientation=orn,
            linkMasses=[0] * n,
            linkCollisionShapeIndices=cols[1:],
            linkVisualShapeIndices=viss[1:],
            linkPositions=[[off[0], off[1], off[2] - base_off[2]] for _, off in parts[1:]],
            linkOrientations=[[0, 0, 0, 1]] * n,
            linkInertialFramePositions=[[0, 0, 0]] * n,
            linkInertialFrameOrientations=[[0, 0, 0, 1]] * n,
            linkParentIndices=[0] * n,
            linkJointTypes=[p.JOINT_FIXED] * n,
            linkJointAxis=[[0, 0, 1]] * n,
            physicsClientId=c,
        )

    def _load_object(self, spec: ObjectSpec) -> PlacedObject:
        c = self.client
        urdf = spec.asset.urdf.format(id=spec.urdf_id) if spec.urdf_id is not None else spec.asset.urdf
        body = p.loadURDF(urdf, [0, 0, 1.0], [0, 0, 0, 1], globalScaling=spec.asset.scale, physicsClientId=c)
        lo, hi = p.getAABB(body, physicsClientId=c)
        base_pos, _ = p.getBasePositionAndOrientation(body, physicsClientId=c)
        half = (np.array(hi) - np.array(lo)) / 2
        # Rest the object's AABB bottom on the table.
        z = TABLE_TOP_Z + (base_pos[2] - lo[2]) + 0.002
        p.resetBasePositionAndOrientation(
            body, [spec.xy[0], spec.xy[1], z], p.getQuaternionFromEuler([0, 0, spec.yaw]), physicsClientId=c
        )
        p.changeDynamics(
            body, -1, lateralFriction=1.0, spinningFriction=0.005, rollingFriction=0.0005, physicsClientId=c
        )
        if spec.asset.recolour:
            # Removing the texture keeps the colour that the instruction names unambiguous.
            p.changeVisualShape(body, -1, rgbaColor=[*spec.rgb, 1], textureUniqueId=-1, physicsClientId=c)
        return PlacedObject(body, spec.asset, spec.colour, half)

    # ------------------------------------------------------------------ control
    def apply_action(self, action: np.ndarray) -> bool:
        """Execute one 15 Hz step of a ``(7,)`` cartesian_position + gripper action; False if IK failed."""
        ik = self.kin.ik(action[:6], q0=self.q_cmd)
        if ik.success:
            self.q_cmd = ik.q
        self.gripper_cmd = float(np.clip(action[6], 0.0, 1.0))
        self._hold_and_step(SUBSTEPS)
        return ik.success

    def _hold_and_step(self, n: int) -> None:
        c = self.client
        p.setJointMotorControlArray(
            self.robot,
            ARM_JOINTS,
            p.POSITION_CONTROL,
            targetPositions=self.q_cmd.tolist(),
            forces=ARM_FORCES,
            positionGains=[0.08] * 7,
            physicsClientId=c,
        )
        finger = 0.04 * (1.0 - self.gripper_cmd)
        p.setJointMotorControlArray(
            self.robot,
            list(FINGER_JOINTS),
            p.POSITION_CONTROL,
            targetPositions=[finger, finger],
            forces=[FINGER_FORCE_N] * 2,
            positionGains=[0.05] * 2,
            physicsClientId=c,
        )
        for _ in range(n):
            p.stepSimulation(physicsClientId=c)

    # ------------------------------------------------------------------ state
    def joint_positions(self) -> np.ndarray:
        states = p.getJointStates(self.robot, ARM_JOINTS, physicsClientId=self.client)
        return np.array([s[0] for s in states])

    def gripper_position(self) -> float:
        states = p.getJointStates(self.robot, list(FINGER_JOINTS), physicsClientId=self.client)
        return gripper_width_to_position(states[0][0] + states[1][0])

    def object_pose(self, obj: PlacedObject) -> tuple[np.ndarray, np.ndarray]:
        pos, orn = p.getBasePositionAndOrientation(obj.body, physicsClientId=self.client)
        return np.array(pos), np.array(orn)

    def object_poses(self) -> np.ndarray:
        """``(n_objects, 7)``: position + quaternion (x, y, z, w) of every manipulable object."""
        return np.stack([np.concatenate(self.object_pose(o)) for o in self.objects])

    def container_pose(self) -> tuple[np.ndarray, float]:
        pos, orn = p.getBasePositionAndOrientation(self.container.body, physicsClientId=self.client)
        return np.array(pos), float(p.getEulerFromQuaternion(orn)[2])

    def in_gripper(self, obj: PlacedObject) -> bool:
        """Both fingers touch the object."""
        return all(
            len(p.getContactPoints(self.robot, obj.body, linkIndexA=j, physicsClientId=self.client)) > 0
            for j in FINGER_JOINTS
        )

    def render(
        self, height: int, width: int, tcp_T: np.ndarray | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Render the three views; pass ``tcp_T`` ``(4, 4)`` when the caller already has the TCP pose."""
        if tcp_T is None:
            tcp_T = self.kin.fk(self.joint_positions())
        return render_views(self.client, self.rig, tcp_T, height, width)
