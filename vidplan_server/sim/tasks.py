"""Task sampling (scene layout + instruction) and success decided from the simulator state.

Two task kinds:

* ``place``: "put the <colour> <object> in the <container>". Success: at the end of the
  episode the target rests inside the container's inner floor area, below its rim plus 5 cm,
  and is not held by the gripper.
* ``pick``: "pick up the <colour> <object>". Success: at the end the target is held by both
  fingers and lifted at least 5 cm above its resting height.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vidplan_server.robot.panda import Q_HOME
from vidplan_server.sim.assets import (
    CONTAINER_COLOURS,
    CONTAINERS,
    colours_for,
    is_novel,
    objects_for,
)
from vidplan_server.sim.cameras import CameraRig
from vidplan_server.sim.scene import ObjectSpec, SceneSpec, SimScene

TASK_KINDS = ("place", "pick")
LIFT_SUCCESS_M = 0.05

# Where objects and the container may be placed (base frame, m): in front of the robot,
# inside DROID's workspace box and comfortably reachable with a top-down grasp.
OBJECT_REGION = ((0.38, 0.68), (-0.26, 0.26))
MIN_OBJECT_GAP_M = 0.085


@dataclass(frozen=True)
class Task:
    kind: str
    instruction: str


@dataclass(frozen=True)
class DistractorCounts:
    train: tuple[int, int] = (1, 3)
    ood: tuple[int, int] = (4, 6)

    def for_split(self, split: str) -> tuple[int, int]:
        return self.ood if split == "ood" else self.train


def task_instruction(kind: str, target: str, container: str) -> str:
    """The instruction of a task of ``kind`` ("place" or "pick") naming ``target`` ("<colour> <object>")."""
    return f"put the {target} in the {container}" if kind == "place" else f"pick up the {target}"


def sample_task(
    rng: np.random.Generator, split: str, place_fraction: float = 0.7, distractors: DistractorCounts | None = None
) -> tuple[SceneSpec, Task]:
    """Sample a scene and a task for ``split`` ("train", "val" or "ood")."""
    distractors = distractors or DistractorCounts()
    objects = objects_for(split)
    colours = colours_for(split)
    colour_names = sorted(colours)

    def draw() -> tuple:
        obj = objects[rng.integers(len(objects))]
        colour = colour_names[rng.integers(len(colour_names))]
        urdf_id = int(rng.integers(*obj.urdf_range)) if obj.urdf_range else None
        return obj, colour, urdf_id

    while True:
        target = draw()
        if split != "ood" or is_novel(target[0], target[1]):
            break
    lo, hi = distractors.for_split(split)
    n_distractors = int(rng.integers(lo, hi + 1))
    chosen = [target]
    used = {(target[0].name, target[1])}
    while len(chosen) < 1 + n_distractors:
        d = draw()
        if (d[0].name, d[1]) not in used:  # descriptions stay unambiguous
            used.add((d[0].name, d[1]))
            chosen.append(d)

    container = CONTAINERS[rng.integers(len(CONTAINERS))]
    container_colour = sorted(CONTAINER_COLOURS)[rng.integers(len(CONTAINER_COLOURS))]
    side = 1.0 if rng.random() < 0.5 else -1.0
    container_xy = (float(rng.uniform(0.45, 0.62)), float(side * rng.uniform(0.20, 0.28)))
    keep_out = container.inner_half_extent_m + 0.08

    placed: list[tuple[float, float]] = []
    specs: list[ObjectSpec] = []
    for obj, colour, urdf_id in chosen:
        for _ in range(500):
            xy = (float(rng.uniform(*OBJECT_REGION[0])), float(rng.uniform(*OBJECT_REGION[1])))
            far_from_container = max(abs(xy[0] - container_xy[0]), abs(xy[1] - container_xy[1])) > keep_out
            far_from_others = all(np.hypot(xy[0] - a, xy[1] - b) > MIN_OBJECT_GAP_M for a, b in placed)
            if far_from_container and far_from_others:
                break
        else:
            continue  # a crowded table: drop this distractor rather than overlap objects
        placed.append(xy)
        specs.append(ObjectSpec(obj, colour, colours[colour], xy, float(rng.uniform(-np.pi, np.pi)), urdf_id))

    kind = "place" if rng.random() < place_fraction else "pick"
    target_desc = f"{chosen[0][1]} {chosen[0][0].name}"
    instruction = task_instruction(kind, target_desc, container.name)
    scene = SceneSpec(
        objects=specs,
        container=container,
        container_colour=container_colour,
        container_xy=container_xy,
        container_yaw=float(rng.uniform(-0.3, 0.3)),
        rig=CameraRig.sample(rng),
        q_start=Q_HOME + rng.normal(0.0, 0.04, 7),
    )
    return scene, Task(kind, instruction)


def is_success(scene: SimScene, task: Task, rest_z: float) -> bool:
    """Decide success from the simulator state. ``rest_z``: the target's initial height (m)."""
    target = scene.objects[0]
    pos, _ = scene.object_pose(target)
    if task.kind == "pick":
        return bool(pos[2] > rest_z + LIFT_SUCCESS_M and scene.in_gripper(target))
    c_pos, c_yaw = scene.container_pose()
    d = pos[:2] - c_pos[:2]
    cos, sin = np.cos(-c_yaw), np.sin(-c_yaw)
    local = np.array([cos * d[0] - sin * d[1], sin * d[0] + cos * d[1]])
    inside = bool(np.all(np.abs(local) < scene.container.asset.inner_half_extent_m))
    low = pos[2] < scene.container.asset.rim_height_m + 0.05
    return inside and low and not scene.in_gripper(target)
