"""How much of the difference between proposal scores is the world model's sampling noise?

The planner rolls every proposal out from one shared noise draw (``Planner.rollout_noise``) and takes the best
score. Whether that choice means anything depends on how the score *differences* compare with how much those
differences move when the draw changes. This module measures it at states of expert-driven simulated scenes
(:func:`expert_states`): each state's proposals (the planner's defaults: the policy's samples) are rolled out and
scored under ``draws`` shared draws (:func:`score_draws`), and :func:`summarize` reports

- ``paired_noise``: the std over draws of ``s_i - s_0`` (proposal i against the first, the policy's own sample),
  averaged over proposals and states -- the noise of one comparison;
- ``spread``: the std over proposals of the draw-averaged scores -- how far apart the proposals really are;
- ``argmax_agreement``: how often another draw picks the same winner as the first (chance ``1 / N``);
- ``spearman_closeness``: Spearman correlation of the draw-averaged score with closeness (minus distance) of each
  proposal's executed end to the instructed object, at approach states (open hand, object farther than 3 cm);
- ``target_auc``: at states where some proposals head for the instructed object and others for another one (the
  object whose direction from the hand, in the table plane, is closest to the chunk's end displacement), the
  probability that a target-bound proposal outscores an other-bound one (draw-averaged; 0.5 is chance) -- whether
  the score picks the right object when the policy's samples disagree on which to take;
- per margin m (:func:`~vidplan_server.planning.selection.select` on the first draw): ``switch_rate``, the share of
  states where the winner is not the policy's own sample, and ``switch_closer_m``, at approach states where it
  switched, the mean of (own sample's end distance - winner's) in metres: positive when switching moved closer.

``benchmarks/score_noise.py`` runs it on the bundled checkpoint and writes the JSON.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import stats

from vidplan_server.planning.selection import select

APPROACH_MIN_DISTANCE_M = 0.03


@dataclass
class StateScores:
    """One probed state: the proposals' scores under each draw and their end distances to the instructed object."""

    scores: np.ndarray  # (D, N) selection score of proposal n under noise draw d
    end_distance_m: np.ndarray  # (N,) distance of each proposal's executed end to the object
    kinds: list[str]  # (N,)
    approach: bool  # open hand, object farther than APPROACH_MIN_DISTANCE_M
    to_target: np.ndarray | None = None  # (N,) bool: the chunk heads for the instructed object, not another one


@dataclass
class ExpertState:
    """A state of an expert-driven scene, before the expert's next action is executed."""

    episode: int
    step: int
    seed: int  # the episode's seed
    instruction: str
    history: list[dict]  # DROID observation dicts, oldest first, the current one last
    target_xyz: np.ndarray  # (3,) the instructed object's position, metres
    objects_xyz: np.ndarray  # (M, 3) every object's position, the instructed one first


def expert_states(
    env, split: str, episodes: int, base_seed: int, every: int, history_steps: int = 16, max_steps: int = 200
) -> Iterator[ExpertState]:
    """Drive ``episodes`` scenes of ``split`` (seeds as the closed-loop benchmark's) with the scripted expert,
    re-planned every 8 steps, and yield the state at every ``every``-th step until the scene succeeds."""
    from vidplan_server.evaluation.closed_loop.agents import build_agent
    from vidplan_server.sim.episode import episode_seed

    for i in range(episodes):
        ep_seed = episode_seed(base_seed, split, i)
        instruction = env.reset(ep_seed)
        expert = build_agent("expert")
        expert.reset(env, ep_seed)
        history: deque[dict] = deque(maxlen=history_steps)
        chunk, row = None, 0
        for t in range(max_steps):
            obs = env.get_observation()
            history.extend([obs] * (history_steps if not history else 1))
            if chunk is None or row >= 8:
                chunk, row = expert.act(list(history), instruction).actions, 0
            if t % every == 0:
                objects = np.array([env.scene.object_pose(o)[0] for o in env.scene.objects], dtype=np.float64)
                yield ExpertState(i, t, ep_seed, instruction, list(history), objects[0], objects)
            env.update_robot(chunk[row])
            row += 1
            if env.is_success():
                break


def heading_to(start_xyz: np.ndarray, end_xyz: np.ndarray, objects_xyz: np.ndarray) -> np.ndarray:
    """Which object (index into objects_xyz (M, 3)) each chunk end (N, 3) heads for from start_xyz (3,): the one whose
    direction in the table plane is closest to the end's displacement (cosine); (N,) int."""
    d = end_xyz[:, :2] - start_xyz[:2]
    o = objects_xyz[:, :2] - start_xyz[:2]
    cos = (d @ o.T) / (np.linalg.norm(d, axis=1, keepdims=True) * np.linalg.norm(o, axis=1) + 1e-9)
    return cos.argmax(1)


def planner_with_policy(ckpt=None):
    """A :class:`~vidplan_server.planning.planner.Planner` on the bundle at ``ckpt`` (default: the bundled one);
    CheckpointError when the bundle cannot be loaded or has no policy module (these measurements plan among the
    policy's samples)."""
    from vidplan_server.models.checkpoint import CheckpointError
    from vidplan_server.planning.planner import Planner

    planner = Planner.load(ckpt)
    if planner.policy is None:
        raise CheckpointError("the checkpoint has no policy module (train one with `vidplan train policy`)")
    return planner


def score_draws(
    planner, req, target_xyz: np.ndarray, draws: int, executed_rows: int = 8, objects_xyz: np.ndarray | None = None
) -> StateScores:
    """Score the request's proposals (the planner's defaults, seeded by ``req.options.seed``) under ``draws``
    shared noise draws (seeds ``seed``, ``seed + 1``, ...; the first is the planner's own). ``target_xyz`` (3,) is
    the instructed object's position (m); a proposal's end is its ``executed_rows``-th row (what the robot runs
    before it re-plans). With ``objects_xyz`` (M, 3, the instructed object first), which object each whole chunk
    heads for (:func:`heading_to`)."""
    import torch

    seed = int(req.options.seed)
    history = planner.encode_history(req.history)
    text = planner.text_embedding(req.instruction)
    props = planner.propose(req, planner.config.num_proposals, np.random.default_rng(seed))
    knots = planner.knots(props.actions)
    where = planner.locate_target(history, text, req.history[-1])  # as the planner locates it, or None
    located = None if where is None else torch.as_tensor(where, dtype=torch.float32)
    rows = []
    for d in range(draws):
        noise = planner.rollout_noise(len(knots), tuple(history.shape[2:]), seed + d)
        pred = planner.rollout(history, knots, planner.config.flow_steps, noise)
        with torch.no_grad():
            rows.append(planner.judge(pred, history, text, poses=knots, located=located).score.float().cpu().numpy())
    end = props.actions[:, min(executed_rows, props.actions.shape[1]) - 1, :3]
    here = np.asarray(req.state.cartesian_position[:3], dtype=np.float64)
    approach = req.state.gripper_position < 0.1 and np.linalg.norm(here - target_xyz) > APPROACH_MIN_DISTANCE_M
    to_target = None
    if objects_xyz is not None and len(objects_xyz) > 1:
        to_target = heading_to(here, props.actions[:, -1, :3], objects_xyz) == 0
    return StateScores(
        np.stack(rows), np.linalg.norm(end - target_xyz, axis=1), list(props.kinds), bool(approach), to_target
    )


def summarize(states: list[StateScores], margins: tuple[float, ...]) -> dict:
    """The figures of the module docstring over ``states`` (each with at least 2 draws and 2 proposals)."""
    if not states:
        raise ValueError("no states to summarize")
    if any(s.scores.shape[0] < 2 or s.scores.shape[1] < 2 for s in states):
        raise ValueError("every state needs at least 2 draws and 2 proposals")
    paired = [(s.scores[:, 1:] - s.scores[:, :1]).std(0, ddof=1).mean() for s in states]
    spread = [s.scores.mean(0).std() for s in states]
    agree = [np.mean(s.scores[1:].argmax(1) == s.scores[0].argmax()) for s in states]
    approach = [s for s in states if s.approach]
    rhos = [
        stats.spearmanr(s.scores.mean(0), -s.end_distance_m).statistic
        for s in approach
        if np.ptp(s.scores.mean(0)) > 0 and np.ptp(s.end_distance_m) > 0
    ]
    aucs = []
    for s in approach:
        if s.to_target is not None and 0 < s.to_target.sum() < len(s.to_target):
            mean = s.scores.mean(0)
            pos, neg = mean[s.to_target], mean[~s.to_target]
            aucs.append(float(np.mean((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None]))))
    out = {
        "states": len(states),
        "approach_states": len(approach),
        "proposals": int(np.median([s.scores.shape[1] for s in states])),
        "draws": int(states[0].scores.shape[0]),
        "paired_noise": float(np.mean(paired)),
        "spread": float(np.mean(spread)),
        "argmax_agreement": float(np.mean(agree)),
        "spearman_closeness": float(np.mean(rhos)) if rhos else float("nan"),
        "target_auc": float(np.mean(aucs)) if aucs else float("nan"),
        "mixed_heading_states": len(aucs),
        "margins": {},
    }
    for m in margins:
        picks = [select(s.scores[0], s.kinds, m).winner for s in states]
        closer = [
            s.end_distance_m[0] - s.end_distance_m[w] for s, w in zip(states, picks, strict=True) if s.approach and w
        ]
        out["margins"][f"{m:g}"] = {
            "switch_rate": float(np.mean([w != 0 for w in picks])),
            "switch_closer_m": float(np.mean(closer)) if closer else float("nan"),
            "approach_switches": len(closer),
        }
    return out
