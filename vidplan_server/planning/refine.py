"""Refinement of the winner (paper Algorithm 3, last stage): the projection onto the feasible set.

Refinement moves positions and gripper only (:data:`REFINED_DIMS`); after each gradient step the knots are
projected back onto the feasible set by :func:`project_knots`, so every iterate is a chunk the safety check can
pass (the joint limits aside, which :func:`~vidplan_server.planning.limits.check_chunk` tests with IK).
"""

from __future__ import annotations

import torch

from vidplan_server.planning.limits import SafetyLimits

REFINED_DIMS = [0, 1, 2, 6]  # x, y, z, gripper: what refinement moves


def project_knots(knots: torch.Tensor, start: torch.Tensor, limits: SafetyLimits, stride: int) -> torch.Tensor:
    """Project model-rate positions + gripper onto the feasible set (no gradient).

    knots (B, H, 4): x, y, z (m) and gripper of the model-rate actions; start (B, 4) the current position and
    gripper. Between knots the control-rate chunk is linear over ``stride`` steps, so each knot may move at
    most ``stride * max_translation_per_step_m`` from the previous one. Sequentially per knot: shrink the
    step to that length, clamp into the workspace box (a convex set containing the previous knot, so the
    step stays short), clamp the gripper to its range. Returns (B, H, 4).
    """
    lo = torch.tensor(limits.workspace_min_m, dtype=knots.dtype, device=knots.device)
    hi = torch.tensor(limits.workspace_max_m, dtype=knots.dtype, device=knots.device)
    max_step = stride * limits.max_translation_per_step_m * (1 - 1e-4)
    g_lo, g_hi = limits.gripper_range
    prev = start[:, :3]
    out = []
    for i in range(knots.shape[1]):  # H is 5: a loop over time, not over proposals
        step = knots[:, i, :3] - prev
        norm = step.norm(dim=-1, keepdim=True)
        step = step * torch.clamp(max_step / norm.clamp_min(1e-12), max=1.0)
        pos = torch.minimum(torch.maximum(prev + step, lo), hi)
        grip = knots[:, i, 3:].clamp(g_lo, g_hi)
        out.append(torch.cat([pos, grip], -1))
        prev = pos
    return torch.stack(out, 1)
