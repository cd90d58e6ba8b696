"""Chunks sampled from the bundle's policy (:mod:`vidplan_server.models.policy`) for a plan request: the planner's
main proposals and the ``policy`` mode's answer."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from vidplan_server.planning.types import PlanningError, PlanRequest


def sample_policy_chunks(policy, req: PlanRequest, count: int, steps: int, device: torch.device) -> np.ndarray:
    """``count`` chunks (count, steps, 7) sampled from ``policy`` for the request's current frame, state and
    instruction (a shorter policy chunk holds its last row). The noise comes from a generator seeded with
    ``options.seed`` (its own stream, apart from the rollout noise), so a seeded request is reproducible."""
    if policy is None:
        raise PlanningError(
            "options.mode: this checkpoint has no policy module (train one with `vidplan train policy`)"
        )
    h, w = policy.config.image_size
    frames = req.history[-1]
    if frames.shape[1:3] != (h, w):
        area = frames.shape[1] * frames.shape[2] > h * w
        frames = np.stack(
            [cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA if area else cv2.INTER_LINEAR) for f in frames]
        )
    images = torch.as_tensor(frames, device=device).permute(0, 3, 1, 2)[None].float() / 255.0
    s = req.state
    state = torch.tensor(
        [[*np.asarray(s.cartesian_position, dtype=np.float64), float(np.clip(s.gripper_position, 0.0, 1.0))]],
        dtype=torch.float32,
        device=device,
    )
    gen = torch.Generator().manual_seed((int(req.options.seed) + 7919) % 2**64)  # own stream, any valid seed
    noise = torch.randn((1, count, policy.config.chunk, 7), generator=gen)
    with torch.no_grad():
        chunks = policy.sample(images, state, [req.instruction], noise)[0].double().cpu().numpy()
    return chunks[:, np.minimum(np.arange(steps), chunks.shape[1] - 1)]
