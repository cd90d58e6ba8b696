"""The one in-memory schema of a DROID episode.

Field names and conventions follow the DROID release (RLDS): a step is a dict with
``observation/exterior_image_1_left`` ... ``action``, ``language_instruction``, ``is_first`` ...;
see ``STEP_FIELDS``. An `Episode` holds all steps of one episode as stacked arrays (time first),
plus the episode's success flag and the simulator's ground truth that evaluation needs.

Conventions (shared with ``vidplan_server.robot.panda``):

* ``cartesian_position``: TCP pose in the robot base frame, x, y, z in metres, then roll, pitch,
  yaw in radians, extrinsic XYZ, each angle in [-π, π) as DROID stores it.
* ``gripper_position``: 0 = open, 1 = closed.
* ``action`` (7): the absolute ``cartesian_position`` target commanded after observing step t,
  followed by the gripper target in [0, 1] (DROID's ``action_dict/cartesian_position`` +
  ``action_dict/gripper_position``; DROID's plain ``action`` field is joint velocities and is
  not used).
* ``reward``: 1.0 on the last step of a successful episode, else 0.0; ``discount`` is 1.0.
* ``is_terminal``: True on the last step when the episode ended because the task finished
  (successfully or not), False when it was cut off by the step limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from vidplan_client.contract import CAMERA_NAMES, CONTROL_HZ, DT_S  # the DROID contract's owner is the client

from vidplan_server.data.errors import DatasetError

__all__ = ["CAMERA_NAMES", "CONTROL_HZ", "DT_S", "STEP_FIELDS", "Episode", "FieldSpec", "GroundTruth", "SchemaError"]


@dataclass(frozen=True)
class FieldSpec:
    shape: tuple[int, ...]  # per step; () for scalars; images use (-1, -1, 3)
    dtype: str


STEP_FIELDS: dict[str, FieldSpec] = {
    **{f"observation/{cam}": FieldSpec((-1, -1, 3), "uint8") for cam in CAMERA_NAMES},
    "observation/cartesian_position": FieldSpec((6,), "float32"),
    "observation/gripper_position": FieldSpec((1,), "float32"),
    "observation/joint_position": FieldSpec((7,), "float32"),
    "action": FieldSpec((7,), "float32"),
    "language_instruction": FieldSpec((), "str"),
    "is_first": FieldSpec((), "bool"),
    "is_last": FieldSpec((), "bool"),
    "is_terminal": FieldSpec((), "bool"),
    "reward": FieldSpec((), "float32"),
    "discount": FieldSpec((), "float32"),
}


class SchemaError(DatasetError):
    """An episode does not match the schema; the message names the field."""


@dataclass
class GroundTruth:
    """Simulator ground truth per step (absent for real data).

    object_poses: ``(T, n_objects, 7)`` float32, position (m) + quaternion (x, y, z, w) in the base frame.
    target_masks: camera -> ``(T, H, W)`` bool, pixels of the target object (empty when read with
    ``load_episode(..., masks=False)``).
    """

    object_names: list[str]
    target_index: int
    object_poses: np.ndarray
    target_masks: dict[str, np.ndarray]


@dataclass
class Episode:
    """One episode, time-major. Shapes: images ``(T, H, W, 3)`` uint8, vectors ``(T, D)`` float32."""

    images: dict[str, np.ndarray]
    cartesian_position: np.ndarray
    gripper_position: np.ndarray
    joint_position: np.ndarray
    action: np.ndarray
    language_instruction: str
    is_first: np.ndarray
    is_last: np.ndarray
    is_terminal: np.ndarray
    reward: np.ndarray
    discount: np.ndarray
    success: bool
    ground_truth: GroundTruth | None = None
    # DROID's action_dict/joint_position: the IK joint targets of `action`, ``(T, 7)`` rad, when known.
    action_joint_position: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.action.shape[0])

    @property
    def resolution(self) -> tuple[int, int]:
        h, w = self.images[CAMERA_NAMES[0]].shape[1:3]
        return int(h), int(w)

    def steps(self) -> Iterator[dict[str, Any]]:
        """Yield DROID-style step dicts (keys of `STEP_FIELDS`)."""
        for t in range(len(self)):
            step: dict[str, Any] = {f"observation/{c}": self.images[c][t] for c in CAMERA_NAMES}
            step["observation/cartesian_position"] = self.cartesian_position[t]
            step["observation/gripper_position"] = self.gripper_position[t]
            step["observation/joint_position"] = self.joint_position[t]
            step["action"] = self.action[t]
            step["language_instruction"] = self.language_instruction
            for flag in ("is_first", "is_last", "is_terminal"):
                step[flag] = bool(getattr(self, flag)[t])
            step["reward"] = float(self.reward[t])
            step["discount"] = float(self.discount[t])
            yield step

    def validate(self) -> None:
        """Raise `SchemaError` naming the first field whose shape, dtype or values are wrong."""
        T = len(self)
        if T < 1:
            raise SchemaError("action: an episode needs at least one step")
        missing = [c for c in CAMERA_NAMES if c not in self.images]
        if missing:
            raise SchemaError(f"observation/{missing[0]}: camera missing")
        h, w = self.resolution
        for cam in CAMERA_NAMES:
            img = self.images[cam]
            if img.dtype != np.uint8 or img.shape != (T, h, w, 3):
                raise SchemaError(f"observation/{cam}: expected uint8 {(T, h, w, 3)}, got {img.dtype} {img.shape}")
        for name, dim in (("cartesian_position", 6), ("gripper_position", 1), ("joint_position", 7)):
            _check_vector(f"observation/{name}", getattr(self, name), T, dim)
        _check_vector("action", self.action, T, 7)
        for name in ("is_first", "is_last", "is_terminal", "reward", "discount"):
            arr = getattr(self, name)
            if arr.shape != (T,):
                raise SchemaError(f"{name}: expected shape {(T,)}, got {arr.shape}")
        if not (self.is_first[0] and self.is_first.sum() == 1):
            raise SchemaError("is_first: must be True on step 0 only")
        if not (self.is_last[-1] and self.is_last.sum() == 1):
            raise SchemaError("is_last: must be True on the last step only")
        if not self.language_instruction.strip():
            raise SchemaError("language_instruction: empty")
        grip = self.action[:, 6]
        if grip.min() < 0.0 or grip.max() > 1.0:
            raise SchemaError("action: gripper target outside [0, 1]")
        gt = self.ground_truth
        if gt is not None:
            if gt.object_poses.ndim != 3 or gt.object_poses.shape[0] != T or gt.object_poses.shape[2] != 7:
                raise SchemaError(f"ground_truth.object_poses: expected (T, n, 7), got {gt.object_poses.shape}")
            if len(gt.object_names) != gt.object_poses.shape[1]:
                raise SchemaError("ground_truth.object_names: one name per object pose expected")
            for cam in CAMERA_NAMES:
                mask = gt.target_masks.get(cam)
                if mask is None or mask.shape != (T, h, w) or mask.dtype != np.bool_:
                    raise SchemaError(f"ground_truth.target_mask.{cam}: expected bool {(T, h, w)}")


def _check_vector(name: str, arr: np.ndarray, T: int, dim: int) -> None:
    if arr.shape != (T, dim):
        raise SchemaError(f"{name}: expected shape {(T, dim)}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise SchemaError(f"{name}: contains NaN or infinite values")
