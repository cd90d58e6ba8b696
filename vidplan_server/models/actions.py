"""Action normalisation: DROID ``cartesian_position`` targets (6) + gripper (1) <-> [-1, 1].

DESIGN: the model sees actions scaled to [-1, 1] by the dataset's 1st and 99th percentiles, stored in
the checkpoint. Decision for the three Euler angles: a top-down gripper has roll near +-pi, where the
stored angle jumps by 2 pi between neighbouring poses (our sim shows q01 = -3.14, q99 = +3.14 for roll,
and DROID does the same). So each angle is first expressed relative to its circular mean over the
dataset and wrapped to (-pi, pi] around it; the percentiles are taken of that unwrapped angle.
Denormalising wraps angles back to (-pi, pi]. Values outside the percentiles map outside [-1, 1]; they
are not clipped (the planner limits actions itself).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

ACTION_DIM = 7
ANGLE_DIMS = (3, 4, 5)


@dataclass(frozen=True)
class ActionStats:
    low: tuple[float, ...]  # 1st percentile per dimension (angles: relative to their centre)
    high: tuple[float, ...]  # 99th percentile per dimension
    angle_centre: tuple[float, float, float]  # circular mean of roll, pitch, yaw (rad)

    def __post_init__(self) -> None:
        if len(self.low) != ACTION_DIM or len(self.high) != ACTION_DIM or len(self.angle_centre) != len(ANGLE_DIMS):
            raise ValueError(f"action stats need {ACTION_DIM} low/high values and {len(ANGLE_DIMS)} angle centres")


def _wrap(x):
    """Angle(s) to (-pi, pi]; numpy or torch."""
    if torch.is_tensor(x):
        return math.pi - torch.remainder(math.pi - x, 2 * math.pi)
    return math.pi - np.mod(math.pi - x, 2 * math.pi)


def fit_action_stats(actions: np.ndarray) -> ActionStats:
    """Statistics of actions (N, 7) for :class:`ActionNormalizer`."""
    actions = np.asarray(actions, dtype=np.float64)
    if actions.ndim != 2 or actions.shape[1] != ACTION_DIM:
        raise ValueError(f"actions must have shape (N, {ACTION_DIM}), got {actions.shape}")
    angles = actions[:, list(ANGLE_DIMS)]
    centre = np.arctan2(np.sin(angles).mean(0), np.cos(angles).mean(0))
    rel = actions.copy()
    rel[:, list(ANGLE_DIMS)] = _wrap(angles - centre)
    low, high = np.percentile(rel, 1, axis=0), np.percentile(rel, 99, axis=0)
    return ActionStats(tuple(map(float, low)), tuple(map(float, high)), tuple(map(float, centre)))


class ActionNormalizer:
    """Differentiable map between raw actions (..., 7) and normalised actions (..., 7)."""

    def __init__(self, stats: ActionStats) -> None:
        self.stats = stats
        low = torch.tensor(stats.low, dtype=torch.float32)
        high = torch.tensor(stats.high, dtype=torch.float32)
        span = high - low
        self.low = low
        self.span = torch.where(span.abs() < 1e-6, torch.ones_like(span), span)
        self.centre = torch.tensor(stats.angle_centre, dtype=torch.float32)

    def normalize(self, actions: torch.Tensor) -> torch.Tensor:
        low, span, centre = (t.to(actions.device, actions.dtype) for t in (self.low, self.span, self.centre))
        angles = _wrap(actions[..., 3:6] - centre)
        rel = torch.cat([actions[..., :3], angles, actions[..., 6:]], dim=-1)
        return 2.0 * (rel - low) / span - 1.0

    def denormalize(self, normalized: torch.Tensor) -> torch.Tensor:
        low, span, centre = (t.to(normalized.device, normalized.dtype) for t in (self.low, self.span, self.centre))
        rel = (normalized + 1.0) / 2.0 * span + low
        angles = _wrap(rel[..., 3:6] + centre)
        return torch.cat([rel[..., :3], angles, rel[..., 6:]], dim=-1)
