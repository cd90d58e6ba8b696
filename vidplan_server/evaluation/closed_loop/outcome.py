"""What happened in a closed-loop episode, read from the simulator: first grasp, success, failure cause.

Instruction following. An object counts as grasped at a step when both fingers touch it
(``SimScene.in_gripper``) and it is lifted at least :data:`GRASP_LIFT_M` (2 cm) above its resting height (its
height at the episode's start). The lift condition keeps a finger brushing an object on the table, or an object
pushed against another, from counting. The first object grasped in an episode decides instruction following:
``"target"`` (the instructed object, ``scene.objects[0]``), ``"other"`` (a distractor) or ``"none"``.

Failure cause of an unsuccessful episode, first rule that applies:

- ``"agent_error: <Type>: <message>"`` / ``"episode_error: ..."``: the agent or the simulator raised;
- ``"wrong_object"``: a distractor was grasped first;
- ``"no_grasp"``: nothing was ever grasped;
- ``"timeout"``: the target was grasped and is still in the gripper at the end (the task did not finish in time);
- ``"dropped"``: the target was grasped and is no longer held, and the task is not done (let go on the way, or
  released outside the container).

How close the hand came (:class:`ApproachMonitor`), to tell the ``no_grasp`` failures apart: the closest the TCP came
to the instructed object (centre to centre), how often the agent commanded the gripper shut (open -> closed at
0.5), and the TCP-to-object distance at the closest such command. :func:`no_grasp_kind` reads them: ``"far"`` (the
hand never came within :data:`NEAR_M` of the object: the agent did not go for it), ``"no_close"`` (it came near but
never closed there: it hesitated) or ``"missed"`` (it closed near the object and did not hold it: imprecision).
Decided: 5 cm, about the half-width of the larger objects plus the fingers' reach, so a close at that distance
could have held the object.
"""

from __future__ import annotations

from dataclasses import dataclass

from vidplan_server.sim.scene import SimScene

GRASP_LIFT_M = 0.02
NEAR_M = 0.05
NO_GRASP_KINDS = ("far", "no_close", "missed")
FIRST_GRASP = ("target", "other", "none")
FAILURE_CAUSES = ("wrong_object", "no_grasp", "timeout", "dropped", "agent_error", "episode_error")


@dataclass
class GraspMonitor:
    """Watches every step for the first grasped object. Create it right after ``env.reset``."""

    scene: SimScene
    lift_m: float = GRASP_LIFT_M

    def __post_init__(self) -> None:
        self.rest_z = [float(self.scene.object_pose(o)[0][2]) for o in self.scene.objects]
        self.first: str = "none"
        self.first_object: str | None = None
        self.first_step: int | None = None

    def grasped(self) -> int | None:
        """Index into ``scene.objects`` of an object grasped now (held by both fingers and lifted), else None."""
        for i, (obj, z0) in enumerate(zip(self.scene.objects, self.rest_z, strict=True)):
            # Height first: the contact query is the more expensive of the two.
            if self.scene.object_pose(obj)[0][2] >= z0 + self.lift_m and self.scene.in_gripper(obj):
                return i
        return None

    def update(self, step: int) -> None:
        """Check the simulator state after control step ``step``; only the first grasp is kept."""
        if self.first != "none":
            return
        i = self.grasped()
        if i is not None:
            self.first = "target" if i == 0 else "other"
            self.first_object = self.scene.objects[i].description
            self.first_step = step


@dataclass
class ApproachMonitor:
    """Closest approach of the hand to the instructed object, and the gripper commands near it (module docstring)."""

    closest_m: float = float("inf")
    closes: int = 0
    closest_close_m: float | None = None
    _closed: bool = False

    def update(self, tcp_xyz, target_xyz, gripper_command: float) -> None:
        """One control step: the TCP (3,) and the object's position (3,) in metres before it, the commanded gripper."""
        d = sum((float(a) - float(b)) ** 2 for a, b in zip(tcp_xyz, target_xyz, strict=True)) ** 0.5
        self.closest_m = min(self.closest_m, d)
        closing = gripper_command >= 0.5
        if closing and not self._closed:
            self.closes += 1
            self.closest_close_m = d if self.closest_close_m is None else min(self.closest_close_m, d)
        self._closed = closing

    def record(self) -> dict:
        """The episode record's fields: closest_target_m, closes, closest_close_m (None without a close)."""
        return {
            "closest_target_m": round(self.closest_m, 4) if self.closest_m != float("inf") else None,
            "closes": self.closes,
            "closest_close_m": None if self.closest_close_m is None else round(self.closest_close_m, 4),
        }


def no_grasp_kind(rec: dict, near_m: float = NEAR_M) -> str | None:
    """``"far"``, ``"no_close"`` or ``"missed"`` for a ``no_grasp`` episode record (module docstring); None for
    another outcome, or a record written before these fields existed."""
    if rec.get("failure_cause") != "no_grasp" or rec.get("closest_target_m") is None:
        return None
    if rec["closest_target_m"] > near_m:
        return "far"
    close = rec.get("closest_close_m")
    return "missed" if close is not None and close <= near_m else "no_close"


def failure_cause(success: bool, first_grasp: str, target_held: bool, error: str | None = None) -> str | None:
    """The cause of a failed episode (module docstring), None for a success.

    ``target_held``: the instructed object is in the gripper at the end; ``error``: the cause already set when the
    agent or the simulator raised (it wins over everything else).
    """
    if error is not None:
        return error
    if success:
        return None
    if first_grasp not in FIRST_GRASP:
        raise ValueError(f"first_grasp must be one of {FIRST_GRASP}, got {first_grasp!r}")
    if first_grasp == "other":
        return "wrong_object"
    if first_grasp == "none":
        return "no_grasp"
    return "timeout" if target_held else "dropped"
