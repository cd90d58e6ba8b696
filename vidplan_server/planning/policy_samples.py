"""Chunks sampled from the bundle's policy (:mod:`vidplan_server.models.policy`) for a plan request: the planner's
main proposals and the ``policy`` mode's answer; and from its goal policy (module ``goal_policy``), which also
reads the semantic encoder's relevance map of the instruction over the current views.

Decided: goal samples replace the last ``goal_samples`` of the ``policy_samples`` (the plan's cost stays that of
``num_proposals`` rollouts; ``policy:0``, the chunk the policy alone would run, stays unless all of them are goal
samples, the default, when ``goal:0`` takes its place as the kept chunk, ``selection.py``), only while the gripper
is open (below 0.5): they exist to bring the hand to the object it was told to take; once it holds something the
policy's samples carry it. The goal samples' noise is a stream of its own, so the policy's samples do not change
with them. The maps are computed here from the request's current frames at the policy's image size, as in training
(``training/policy_stage.add_target_maps``), not from the codec's round trip.

Decided: ``PlannerConfig.goal_first`` (off by default, ``vidplan serve --goal-first``) puts the goal samples before
the policy's when both are drawn. The goal policy's coherent sample is then the kept chunk and the policy's samples
are challengers. On development seeds, 9 goal + 3 policy samples that way recovered grasps the goal policy hovers
over (ducks above all) on ``val`` (83 against 78 of 100), but lost 4 of 50 ``ood`` episodes (19 against 23, more
drops), so it is off (README, closed-loop benchmark, session 18). ``PlannerConfig.mix_radius`` (off, 0) draws the
policy's samples only while the hand is within that distance of the located object in the table plane (all goal
samples farther away, or with nothing located): a test of whether the ``ood`` cost came from the approach or from the
grasp. At 10 cm, with 9 + 3 and ``goal_first``, ``val`` was the same 83 (8 won, 3 lost against shipped) and ``ood``
18 of 50 (against 23): the cost is in the grasp, where the policy's samples win with grasps of objects it never saw
that fail (more ``no_grasp`` and drops). So it is off too (README, session 19).

Decided: ``PlannerConfig.mix_known_words`` (off by default) draws the policy's samples only when the policy knows
every word of the instruction, i.e. each is in its vocabulary (``PolicyConfig.vocab``: the ``train`` split's
instruction words; any other word reaches it as a hashed bucket it never learned a meaning for). An instruction with
a word it does not know is one the policy cannot follow -- the words name an object the robot data never showed --
so there its samples, which sessions 18 and 19 found winning grasps of such objects that then fail, stay out and all
samples are the goal policy's. This is the policy's own confidence in the words, read from the request; it assumes a
closed-vocabulary policy like ours (an open-vocabulary one, such as pi0.5's, knows every word, and the gate then
never closes). A policy without a vocabulary (``vocab`` empty) is taken to know every word.

Decided: the flow's starting noise is drawn at ``PlannerConfig.policy_temperature`` 0.5 (its standard deviation;
trained at 1), for the policy and the goal policy alike: a colder draw lands nearer the flow's modes, the common
trade of diversity for precision in flow and diffusion policies. The policy alone on the closed-loop benchmark's
50 ``val`` seeds (``--seed 1000``) succeeded 37 / 41 / 38 times at 1 / 0.5 / 0.25, but pooled over base seeds
1000, 2000 and 3000 (150 episodes) 69 % at 1 against 72 % at 0.5: a gain within the noise (one episode fewer on seed
2000), kept because pooled it is not worse (README, the bundled policy).

Decided: **backward coherence** (Liu et al. 2024, "Bidirectional Decoding"'s backward term). A robot that re-plans
every 8 steps of a 15-step chunk draws fresh noise each time, and a sample of another mode (the other of two objects
that fit the words, a grasp turned the other way) undoes the last chunk's motion: the hand dithers, which the closed
loop showed as the policy's commonest failure (gripper open 2-30 cm from the object, never closed). With the
request's ``reference`` (R, 7), the unexecuted rest of the chunk the robot is running, :func:`coherent_index` keeps
the sample whose first R rows are nearest to it (mean TCP distance, m, plus ``COHERENCE_GRIPPER_M`` per unit of
gripper difference). The ``policy`` mode draws ``PlannerConfig.coherence_samples`` and answers that one; a plan puts
it first among the policy (or goal) samples, as the incumbent the selection keeps unless beaten (``selection.py``).
Without a reference nothing changes: sample 0 is the chunk a single draw gives. Measured with the policy alone on
development seeds (base seeds 4000, 5000, 6000; 150 ``val`` episodes; not the benchmark's seeds): 111 successes
with one draw per plan, 117 keeping the coherent one of 16 (14 episodes won, 8 lost, paired), 117 of 8 (the first
plan the medoid), 112 as shipped (the first plan one draw; 6 won, 5 lost), and 105 keeping the medoid of 8 instead
(the sample nearest the others, no reference): continuity helps, a consensus does not. On the closed-loop
benchmark's base seeds 3000, 1000, 2000 as shipped: 119 against 109 of 150 (15 won, 5 lost; README, "Backward
coherence"); over both sets 21 won and 10 lost -- a few points, not yet beyond the noise. The medoid first plan's
edge (117 vs 112) did not replicate on fresh seeds (7000, 8000, 9000; 150 ``val``): 116 against 115 as shipped, 7
won and 6 lost, so the first plan stays one draw.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from vidplan_server.models.semantic import words
from vidplan_server.planning.types import PlanningError, PlanRequest

GOAL_STREAM = 104729  # seed offset of the goal samples' noise
COHERENCE_GRIPPER_M = 0.05  # coherence distance of a full gripper difference (open vs closed), in metres of TCP


def coherence_distances(chunks: np.ndarray, reference: np.ndarray | None) -> np.ndarray | None:
    """How far each of ``chunks`` (K, S, 7) departs from ``reference`` (R, 7), both cartesian_position + gripper, over
    their first min(R, S) rows: mean TCP distance (m) plus ``COHERENCE_GRIPPER_M`` per unit of gripper difference,
    (K,); None without a reference."""
    if reference is None or len(reference) == 0:
        return None
    ref = np.asarray(reference, dtype=np.float64)
    n = min(len(ref), chunks.shape[1])
    dist = np.linalg.norm(chunks[:, :n, :3] - ref[None, :n, :3], axis=-1).mean(1)
    return dist + COHERENCE_GRIPPER_M * np.abs(chunks[:, :n, 6] - ref[None, :n, 6]).mean(1)


def coherent_index(chunks: np.ndarray, reference: np.ndarray | None) -> int:
    """The sample that continues the chunk being executed (module docstring): chunks (K, S, 7) and reference
    (R, 7), both cartesian_position + gripper; 0 without a reference."""
    dist = coherence_distances(chunks, reference) if len(chunks) >= 2 else None
    return 0 if dist is None else int(np.argmin(dist))


def coherent_first(chunks: np.ndarray | None, reference: np.ndarray | None) -> np.ndarray | None:
    """``chunks`` (K, S, 7) with the coherent sample (:func:`coherent_index`) swapped to index 0 (the incumbent's
    slot)."""
    if chunks is None:
        return None
    k = coherent_index(chunks, reference)
    if k:
        chunks = chunks.copy()
        chunks[[0, k]] = chunks[[k, 0]]
    return chunks


def goal_sample_count(
    wanted: int,
    samples: int,
    goal_policy,
    gripper: float,
    hand: np.ndarray | None = None,
    located: np.ndarray | None = None,
    mix_radius: float = 0.0,
    known_words: bool = True,
) -> int:
    """How many of ``samples`` policy samples are goal samples (module docstring): ``wanted`` at most, none
    without a goal policy or with the gripper closed. With ``mix_radius`` > 0 (m), all of them while the hand
    (``hand``, (3,) m, base frame) is that far or farther, horizontally, from ``located`` (3,), the located
    instructed object; no located object (None or NaN) counts as far. All of them too without ``known_words``
    (the policy does not know a word of the instruction, :func:`knows_words`)."""
    if goal_policy is None or gripper >= 0.5:
        return 0
    if not known_words or (mix_radius > 0 and not _within(hand, located, mix_radius)):
        return max(0, samples)
    return max(0, min(wanted, samples))


def knows_words(policy, instruction: str) -> bool:
    """Whether every word of ``instruction`` is in ``policy``'s vocabulary (module docstring, ``mix_known_words``);
    True for a policy without one, or without a policy."""
    vocab = set(policy.config.vocab) if policy is not None else set()
    return not vocab or all(w in vocab for w in words(instruction))


def _within(hand: np.ndarray | None, located: np.ndarray | None, radius: float) -> bool:
    """Whether ``hand`` is less than ``radius`` (m) from ``located`` in the table plane (x, y)."""
    if hand is None or located is None or not np.isfinite(located[:2]).all():
        return False
    return float(np.linalg.norm(np.asarray(hand[:2], dtype=np.float64) - located[:2])) < radius


def policy_inputs(policy, req: PlanRequest, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The request's current views at the policy's size, (1, V, 3, h, w) in [0, 1], and its state (1, 7)."""
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
    return images, state


def instruction_maps(semantic, text: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """The instruction's relevance over each view: text (D,) embedding, images (1, V, 3, h, w) -> (1, V, gh, gw)."""
    V = images.shape[1]
    with torch.no_grad():
        rel = semantic.score(images[0], text.reshape(1, -1).expand(V, -1)).relevance.float()
    return rel.clamp(0.0, 1.0)[None]


def sample_policy_chunks(
    policy,
    req: PlanRequest,
    count: int,
    steps: int,
    device: torch.device,
    semantic=None,
    text: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> np.ndarray:
    """``count`` chunks (count, steps, 7) sampled from ``policy`` for the request's current frame, state and
    instruction (a shorter policy chunk holds its last row). A goal policy (``target_map``) also reads the maps of
    the instruction's embedding ``text`` (D,) by the ``semantic`` backend. The noise comes from a generator seeded
    with ``options.seed`` (its own stream, apart from the rollout noise; another one for a goal policy), so a
    seeded request is reproducible; it is scaled by ``temperature`` (the module docstring)."""
    if policy is None:
        raise PlanningError(
            "options.mode: this checkpoint has no policy module (train one with `vidplan train policy`)"
        )
    images, state = policy_inputs(policy, req, device)
    maps = instruction_maps(semantic, text, images) if policy.config.target_map else None
    offset = 7919 + (GOAL_STREAM if maps is not None else 0)
    gen = torch.Generator().manual_seed((int(req.options.seed) + offset) % 2**64)  # own stream, any valid seed
    noise = temperature * torch.randn((1, count, policy.config.chunk, 7), generator=gen)
    with torch.no_grad():
        chunks = policy.sample(images, state, [req.instruction], noise, maps)[0].double().cpu().numpy()
    return chunks[:, np.minimum(np.arange(steps), chunks.shape[1] - 1)]
