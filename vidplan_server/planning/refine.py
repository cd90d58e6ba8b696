"""Refinement of the winner (paper Algorithm 3, last stage): gradient ascent, projection, the control-rate chunk.

Refinement moves positions and gripper only (:data:`REFINED_DIMS`) in the world model's normalised action space,
with Adam; after each step the knots are projected back onto the feasible set by :func:`project_knots`, so every
iterate is a chunk the safety check can pass (the joint limits aside, which
:func:`~vidplan_server.planning.limits.check_chunk` tests with IK). Each iterate is evaluated; the ones that beat
iteration 0 (the proposal itself) are returned best first, so refinement never lowers the objective. With a
deadline an iteration starts only when the last one's time still fits. :func:`control_chunk` turns refined knots
into the chunk at the control rate.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
import torch

from vidplan_server.planning.limits import SafetyLimits
from vidplan_server.planning.types import RefineStep

REFINED_DIMS = [0, 1, 2, 6]  # x, y, z, gripper: what refinement moves


@dataclass
class Rollout:
    knots: torch.Tensor  # (1, H, 7) raw model-rate actions
    pred: torch.Tensor  # (1, H, C, V*h, w)


def gradient_ascent(
    objective: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    normalizer,
    start_knots: torch.Tensor,
    start_state: torch.Tensor,
    limits: SafetyLimits,
    stride: int,
    iters: int,
    lr: float,
    clock: Callable[[], float],
    autocast: Callable[[], AbstractContextManager],
    deadline: float | None,
    first_estimate_s: float,
) -> tuple[list[Rollout], list[RefineStep], bool]:
    """``iters`` Adam steps on ``objective(raw knots (1, H, 7)) -> (J, value, entropy, pred)`` from
    ``start_knots``; start_state (1, 4) current x, y, z, gripper. Returns (the iterates that beat iteration 0,
    best first; the trace, iteration 0 first; whether the deadline cut it)."""
    base = normalizer.normalize(start_knots).detach()
    z = base[..., REFINED_DIMS].clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    trace: list[RefineStep] = []
    better: list[tuple[float, Rollout]] = []
    estimate = first_estimate_s
    cut = False

    def assemble(zz: torch.Tensor) -> torch.Tensor:
        full = base.clone()
        full[..., REFINED_DIMS] = zz
        return normalizer.denormalize(full)

    for i in range(iters + 1):
        t0 = clock()
        if deadline is not None and t0 + estimate >= deadline:
            cut = True
            break
        with torch.set_grad_enabled(i < iters), autocast():  # the last iterate is only evaluated
            raw = assemble(z)
            J, v, h, pred = objective(raw)
        trace.append(RefineStep(i, float(J.detach()), float(v.detach().mean()), float(h.detach().mean())))
        if i > 0 and trace[-1].objective > trace[0].objective:
            better.append((trace[-1].objective, Rollout(raw.detach(), pred.detach().float())))
        if i < iters:
            opt.zero_grad()
            (-J.sum()).backward()
            opt.step()
            with torch.no_grad():
                stepped = assemble(z)
                projected = project_knots(stepped[..., REFINED_DIMS], start_state, limits, stride)
                z.copy_(normalizer.normalize(_with_dims(stepped, projected))[..., REFINED_DIMS])
        estimate = clock() - t0
    return [r for _, r in sorted(better, key=lambda b: -b[0])], trace, cut


def control_chunk(knots: np.ndarray, proposal: np.ndarray, stride: int) -> np.ndarray:
    """Refined knots (H, 7) -> control-rate chunk (S, 7): the proposal (S, 7) moved by what refinement changed.

    Decided: the change of each knot's positions and gripper (refined minus the proposal's own knot, its steps
    ``stride - 1, 2 * stride - 1, ...``) is interpolated linearly between knots, from zero at the current state,
    and added to the proposal; orientations stay the proposal's. So unrefined knots give back the proposal
    exactly, with its gripper timing (a policy's close at one control step). The first version drew the chunk
    straight through the knots instead: that smeared a policy's gripper close over ``stride`` steps and cut the
    corners of its path even when refinement changed almost nothing.
    """
    H = len(knots)
    own = proposal[stride - 1 :: stride][:H]
    delta = np.asarray(knots, dtype=np.float64)[:, REFINED_DIMS] - own[:, REFINED_DIMS]  # (H, 4)
    pts = np.concatenate([np.zeros((1, len(REFINED_DIMS))), delta])  # (H + 1, 4)
    s = np.arange(len(proposal)) + 1.0  # control step s + 1 reaches knot (s + 1) / stride
    x = np.arange(H + 1) * stride
    lin = np.stack([np.interp(s, x, pts[:, d]) for d in range(len(REFINED_DIMS))], 1)
    out = np.array(proposal, dtype=np.float64, copy=True)
    out[:, REFINED_DIMS] += lin
    return out


def _with_dims(full_raw: torch.Tensor, dims_values: torch.Tensor) -> torch.Tensor:
    out = full_raw.clone()
    out[..., REFINED_DIMS] = dims_values
    return out


def project_knots(knots: torch.Tensor, start: torch.Tensor, limits: SafetyLimits, stride: int) -> torch.Tensor:
    """Project model-rate positions + gripper onto the feasible set (no gradient).

    knots (B, H, 4): x, y, z (m) and gripper of the model-rate actions; start (B, 4) the current position and
    gripper. Each knot may move at most ``stride * max_translation_per_step_m`` from the previous one (the most
    ``stride`` control steps can cover). Sequentially per knot: shrink the step to that length, clamp into the
    workspace box (a convex set containing the previous knot, so the step stays short), clamp the gripper to its
    range. Returns (B, H, 4). This bounds the knots only: the control-rate chunk built from them
    (:func:`control_chunk`, the proposal plus the interpolated changes) gets the full safety check afterwards.
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
