"""Catalogue of the objects, colours and containers of the simulated DROID scene.

Every manipulable object comes from ``pybullet_data``. Sizes are scaled so that each fits the
Panda gripper (fingers open 0.08 m). The ``ood`` split draws its targets from objects and
colours that the ``train`` / ``val`` splits never use.
"""

from __future__ import annotations

from dataclasses import dataclass

SPLITS = ("train", "val", "ood")


@dataclass(frozen=True)
class ObjectAsset:
    name: str  # the noun used in instructions
    urdf: str  # path relative to pybullet_data; "random_urdfs/*" picks one of a range
    scale: float
    recolour: bool = True  # whether the object takes the sampled colour
    urdf_range: tuple[int, int] | None = None  # inclusive-exclusive ids for random_urdfs


@dataclass(frozen=True)
class ContainerAsset:
    name: str
    kind: str  # "urdf" (loaded) or "box" (built from primitives)
    urdf: str | None
    scale: float
    inner_half_extent_m: float  # half side of the inner floor, for the success test
    rim_height_m: float


TRAIN_OBJECTS = (
    ObjectAsset("cube", "cube_small.urdf", 0.9),
    ObjectAsset("lego", "lego/lego.urdf", 1.5),
    ObjectAsset("duck", "duck_vhacd.urdf", 0.6),
    ObjectAsset("block", "jenga/jenga.urdf", 0.6),
    ObjectAsset("shape", "random_urdfs/{id:03d}/{id:03d}.urdf", 0.45, urdf_range=(0, 500)),
)
OOD_OBJECTS = (
    ObjectAsset("teddy bear", "teddy_vhacd.urdf", 0.6),
    ObjectAsset("toy", "random_urdfs/{id:03d}/{id:03d}.urdf", 0.45, urdf_range=(500, 1000)),
    ObjectAsset("ball", "sphere_small.urdf", 0.8),
)

TRAIN_COLOURS = {
    "red": (0.85, 0.12, 0.10),
    "green": (0.15, 0.70, 0.20),
    "blue": (0.12, 0.25, 0.85),
    "yellow": (0.95, 0.85, 0.10),
}
OOD_COLOURS = {
    "purple": (0.55, 0.20, 0.75),
    "orange": (1.00, 0.50, 0.05),
    "cyan": (0.10, 0.80, 0.85),
    "pink": (1.00, 0.55, 0.75),
}

CONTAINERS = (
    ContainerAsset("tray", "urdf", "tray/traybox.urdf", 0.35, inner_half_extent_m=0.085, rim_height_m=0.05),
    ContainerAsset("box", "box", None, 1.0, inner_half_extent_m=0.075, rim_height_m=0.06),
)
CONTAINER_COLOURS = {"grey": (0.50, 0.50, 0.54), "black": (0.15, 0.15, 0.17), "white": (0.92, 0.92, 0.92)}


def objects_for(split: str) -> tuple[ObjectAsset, ...]:
    """Objects a split may place in the scene (``ood`` targets are further limited by `is_novel`)."""
    _check_split(split)
    return OOD_OBJECTS + TRAIN_OBJECTS if split == "ood" else TRAIN_OBJECTS


def colours_for(split: str) -> dict[str, tuple[float, float, float]]:
    _check_split(split)
    return {**TRAIN_COLOURS, **OOD_COLOURS} if split == "ood" else dict(TRAIN_COLOURS)


def is_novel(obj: ObjectAsset, colour: str) -> bool:
    """True when an (object, colour) pair never occurs in the training split."""
    return obj in OOD_OBJECTS or colour in OOD_COLOURS


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
