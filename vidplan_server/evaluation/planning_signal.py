"""Does the planner's score prefer the proposals that move toward the instructed object? And if not, which stage
loses the signal? (``vidplan eval planning-signal``.)

At **approach steps** of held-out recorded episodes (gripper open, the target more than
``min_target_distance_m`` from the TCP), the planner's proposals are generated as in a plan call and every
proposal is scored by several *variants* of the scoring pipeline. Per step and variant:

- ``spearman``: Spearman correlation of the scores with ``-(distance of the chunk's end position to the
  object)`` (a constant score counts as 0, chance is 0);
- ``winner_best_third``: whether the highest-scoring proposal is among the third of proposals that end
  nearest the object (chance 1/3).

Each is measured twice: with the episode's instruction (the object is the target), and with the instruction
rewritten to name a distractor of the same scene (the object is that distractor): a score that follows the
words moves with the instruction, one that follows the data's habits does not.

Variants, from the planner as it runs to oracles that replace one stage at a time:

====================== ==================================================================================
``model``              the planner's selection score: flow-map rollout, decoded frames, UQ weighting
``model-no-uq``        the same without the uncertainty weight
``value``              the value head's mean expected value of the rollout (the refinement objective)
``progress``           the progress term alone (negated distance): with a ``locator`` module, the scored
                       frames' commanded positions to the located object; else the ``progress`` head's
                       distance read off the flow-map rollout's scored frames
``sim``                the simulator as the world model: every proposal executed from the recorded state,
                       the rendered frames encoded and decoded by the codec, then scored as ``model``
``sim-raw``            the rendered frames scored directly (no codec round trip)
``sim-gt-relevance``   the rendered frames with the relevance map replaced by the instructed object's mask
                       (isolates the semantic encoder's localisation)
====================== ==================================================================================

Reading the table: ``model`` low and ``sim`` high -> the world model loses the signal; ``sim`` low and
``sim-raw`` high -> the codec; ``sim-raw`` low and ``sim-gt-relevance`` high -> the semantic encoder;
all low -> the form of the score itself. With a ``progress`` module, ``model``, ``model-no-uq`` and the ``sim``
variants include its term as the planner does (on the sim variants, read off the rendered frames' latents; with
``sim-gt-relevance`` the target map stays the encoder's).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from tqdm import tqdm

from vidplan_server.data.instructions import distractor_instruction
from vidplan_server.data.schema import CAMERA_NAMES, Episode
from vidplan_server.planning.objective import (
    current_target_maps,
    decode_views,
    progress_distances,
    score_frames,
    scored_frame_ids,
    scored_view_ids,
    uq_maps,
    value_objective,
)
from vidplan_server.planning.offline import request_from_episode
from vidplan_server.planning.planner import Planner
from vidplan_server.planning.types import PlanOptions

VARIANTS = ("model", "model-no-uq", "value", "progress", "sim", "sim-raw", "sim-gt-relevance")
SIM_VARIANTS = ("sim", "sim-raw", "sim-gt-relevance")
INSTRUCTIONS = ("target", "distractor")


@dataclass(frozen=True)
class SignalConfig:
    steps_per_episode: int = 3  # approach steps sampled per episode (evenly over its approach phase)
    min_target_distance_m: float = 0.08
    max_episodes: int | None = None
    num_proposals: int | None = None  # None: the planner's default N
    seed: int = 0
    variants: tuple[str, ...] = VARIANTS

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown}; choose from {VARIANTS}")
        if self.steps_per_episode < 1:
            raise ValueError("steps_per_episode must be >= 1")


@dataclass
class StepSignal:
    """One approach step: per instruction kind, per variant, the proposal scores and the object distances."""

    episode: int
    step: int
    instruction: dict[str, str]
    distance_m: dict[str, list[float]]  # kind -> (N,)
    scores: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # kind -> variant -> (N,)
    kinds: list[str] = field(default_factory=list)  # proposal kinds


def approach_steps(episode: Episode, count: int, min_distance_m: float, first: int) -> list[int]:
    """Up to ``count`` steps, evenly spread, where the gripper is open and the target is far from the TCP."""
    gt = episode.ground_truth
    tcp = episode.cartesian_position[:, :3]
    target = gt.object_poses[:, gt.target_index, :3]
    grip = np.asarray(episode.gripper_position).reshape(-1)
    ok = (grip < 0.5) & (np.linalg.norm(tcp - target, axis=1) > min_distance_m)
    ok[:first] = False
    # The approach phase only: stop at the first step where the gripper closes.
    closed = np.nonzero(grip >= 0.5)[0]
    if len(closed):
        ok[closed[0] :] = False
    candidates = np.nonzero(ok)[0]
    if len(candidates) == 0:
        return []
    pick = np.linspace(0, len(candidates) - 1, min(count, len(candidates))).round().astype(int)
    return sorted({int(candidates[i]) for i in pick})


def rank_metrics(scores: np.ndarray, distance: np.ndarray) -> tuple[float, bool]:
    """(Spearman of scores with -distance, 0 for constant scores; whether the argmax ends in the nearest third)."""
    s = np.asarray(scores, dtype=np.float64)
    d = np.asarray(distance, dtype=np.float64)
    if np.ptp(s) < 1e-12 or np.ptp(d) < 1e-12:
        rho = 0.0
    else:
        rho = float(spearmanr(s, -d).statistic)
        rho = 0.0 if math.isnan(rho) else rho
    order = np.argsort(d, kind="stable")
    best = set(order[: max(1, int(math.ceil(len(d) / 3)))].tolist())
    return rho, int(np.argmax(s)) in best


class SignalProbe:
    """Scores the proposals of one step with every variant."""

    def __init__(self, planner: Planner, config: SignalConfig) -> None:
        self.planner = planner
        self.config = config
        self.names = list(planner.world.codec.config.views)
        self.oracle = None
        if any(v in SIM_VARIANTS for v in config.variants):
            from vidplan_server.evaluation.sim_oracle import SimOracle

            self.oracle = SimOracle()

    def close(self) -> None:
        if self.oracle is not None:
            self.oracle.close()

    @torch.no_grad()
    def probe(self, episode: Episode, step: int, rng: np.random.Generator) -> StepSignal | None:
        pl, cfg = self.planner, self.config
        gt = episode.ground_truth
        instructions = {"target": episode.language_instruction}
        objects = {"target": gt.target_index}
        others = [i for i in range(len(gt.object_names)) if i != gt.target_index]
        if others:
            j = int(rng.choice(others))
            text = distractor_instruction(episode.language_instruction, gt.object_names, gt.target_index, j)
            if text is not None:
                instructions["distractor"], objects["distractor"] = text, j
        N = cfg.num_proposals or pl.config.num_proposals
        req = request_from_episode(
            episode, step, pl.history_len, pl.frame_stride, PlanOptions(num_proposals=N, seed=cfg.seed)
        )
        history = pl.encode_history(req.history)
        props = pl.propose(req, N, np.random.default_rng(cfg.seed))
        ends = props.actions[:, -1, :3]
        out = StepSignal(
            episode.metadata.get("episode_index", -1),
            step,
            instructions,
            {k: np.linalg.norm(ends - gt.object_poses[step, o, :3], axis=1).tolist() for k, o in objects.items()},
            kinds=list(props.kinds),
        )
        variants = cfg.variants
        hist = history.expand(len(props), *history.shape[1:])
        score_cfg = pl.config.score
        ids = scored_view_ids(self.names, score_cfg)
        fids = scored_frame_ids(pl.horizon, score_cfg)  # the frames the planner's score reads, for every variant
        model = sim = None
        if "progress" in variants and pl.progress is None and pl.locator is None:
            raise ValueError("variant 'progress' needs a bundle with a progress module (`vidplan train progress`)")
        if any(v in ("model", "model-no-uq", "value", "progress") for v in variants):
            noise = pl.rollout_noise(len(props), tuple(history.shape[2:]), cfg.seed)  # as the planner rolls out
            pred = pl.rollout(history, pl.knots(props.actions), pl.config.flow_steps, noise)
            model = (
                pred,
                uq_maps(pl.uq, pred, hist, score_cfg.confidence_eps)[0][:, fids],
                decode_views(pl.world.codec, pred[:, fids], ids),
            )
        if self.oracle is not None:
            self.oracle.load(episode, step)
            sim = self._sim_inputs(self.oracle.rollout(props.actions, pl.frame_stride), hist, ids, fids)
        no_uq = replace(score_cfg, weighting="none")
        knots = pl.knots(props.actions)
        for kind, instruction in instructions.items():
            text = pl.text_embedding(instruction)
            res: dict[str, list[float]] = {}
            has_progress = pl.locator is not None or pl.progress is not None
            use_progress = has_progress and score_cfg.progress_weight > 0
            target = current_target_maps(pl.world.codec, pl.semantic, hist, text) if pl.progress is not None else None
            where = pl.locate_target(history, text, req.history[-1])  # as the planner locates it, or None
            located = None if where is None else torch.as_tensor(where, dtype=torch.float32)[None]

            def distances(latents, target=target, located=located, on=use_progress, knots=knots):  # (B, F) m or None
                if not on:
                    return None
                if located is not None:  # as the planner: the commanded position at the scored frames
                    return (knots[:, fids, :3] - located[:, None]).norm(dim=-1)
                return progress_distances(pl.progress, latents, target)

            def score(frames, ent, dist, c=score_cfg, relevance=None, text=text):
                t = score_frames(frames, ids, self.names, text, pl.semantic, c, ent, relevance, dist)
                return t.score.tolist()

            if model is not None:
                pred, ent, frames = model
                dist = distances(pred[:, fids])
                if "model" in variants:
                    res["model"] = score(frames, ent, dist)
                if "model-no-uq" in variants:
                    res["model-no-uq"] = score(frames, ent, dist, no_uq)
                if "value" in variants:
                    res["value"] = value_objective(pred, hist, pl.uq, pl.value, score_cfg)[0].tolist()
                if "progress" in variants:
                    d = distances(pred[:, fids], on=True)
                    res["progress"] = (-d.max(1).values).tolist()
            if sim is not None:
                ent, decoded, raw, segmentation, latents = sim
                dist = distances(latents)
                if "sim" in variants:
                    res["sim"] = score(decoded, ent, dist)
                if "sim-raw" in variants:
                    res["sim-raw"] = score(raw, ent, dist)
                if "sim-gt-relevance" in variants:
                    mask = self._mask_grid(segmentation, objects[kind])
                    res["sim-gt-relevance"] = score(raw, ent, dist, relevance=mask)
            out.scores[kind] = res
        return out

    def _sim_inputs(self, sim, hist: torch.Tensor, ids: list[int], fids: list[int]):
        """(entropy map of the rendered frames' latents, their codec round trip, the raw frames, segmentation, the
        latents), of the scored frames ``fids``."""
        pl = self.planner
        N, H = sim.frames.shape[:2]
        latents = pl.world.encode(sim.frames.reshape(N * H, *sim.frames.shape[2:])).float()
        latents = latents.reshape(N, H, *latents.shape[1:])
        ent = uq_maps(pl.uq, latents, hist, pl.config.score.confidence_eps)[0][:, fids]
        decoded = decode_views(pl.world.codec, latents[:, fids], ids)
        raw = torch.from_numpy(sim.frames[:, fids][:, :, ids]).to(pl.device).movedim(-1, -3).float() / 255.0
        return ent, decoded, raw, sim.segmentation[:, fids], latents[:, fids]

    def _mask_grid(self, segmentation: np.ndarray, obj: int) -> torch.Tensor:
        """The object's coverage of each cell of a 16 x 16 grid over the centre view: (N, H, 16, 16)."""
        c = CAMERA_NAMES.index(self.planner.config.score.centre_view)
        mask = torch.from_numpy(segmentation[:, :, c] == self.oracle.bodies[obj]).float()
        N, H = mask.shape[:2]
        grid = F.adaptive_avg_pool2d(mask.flatten(0, 1)[:, None], 16)[:, 0].reshape(N, H, 16, 16)
        return grid.to(self.planner.device)


def summarize(steps: list[StepSignal], variants: tuple[str, ...]) -> dict:
    """Mean Spearman and winner-in-best-third rate per instruction kind and variant."""
    out: dict = {}
    for kind in INSTRUCTIONS:
        rows = {}
        for v in variants:
            rhos, wins = [], []
            for s in steps:
                if kind in s.scores and v in s.scores[kind]:
                    rho, win = rank_metrics(np.array(s.scores[kind][v]), np.array(s.distance_m[kind]))
                    rhos.append(rho)
                    wins.append(win)
            if rhos:
                rows[v] = {
                    "spearman": float(np.mean(rhos)),
                    "spearman_sem": float(np.std(rhos) / math.sqrt(len(rhos))),
                    "winner_best_third": float(np.mean(wins)),
                    "steps": len(rhos),
                }
        out[kind] = rows
    return out


def format_table(summary: dict) -> str:
    variants = list(dict.fromkeys(v for k in INSTRUCTIONS for v in summary.get(k, {})))
    lines = [
        "| variant | Spearman (target) | winner in best third (target) | Spearman (distractor named) | "
        "winner in best third (distractor) | steps |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for v in variants:
        t = summary.get("target", {}).get(v)
        d = summary.get("distractor", {}).get(v)

        def cell(r, key):
            if r is None:
                return "-"
            return f"{r[key]:+.3f} ± {r['spearman_sem']:.3f}" if key == "spearman" else f"{r[key]:.2f}"

        lines.append(
            f"| {v} | {cell(t, 'spearman')} | {cell(t, 'winner_best_third')} | {cell(d, 'spearman')} | "
            f"{cell(d, 'winner_best_third')} | {t['steps'] if t else 0} |"
        )
    return "\n".join(lines)


def run_planning_signal(
    planner: Planner, data: Path, out: Path, config: SignalConfig = SignalConfig(), progress: bool = True
) -> dict:
    """Probe every selected step of dataset ``data``; write ``planning_signal.json`` and ``.md`` into ``out``."""
    from vidplan_server.data.reader import EpisodeDataset

    dataset = EpisodeDataset(data)
    n = len(dataset) if config.max_episodes is None else min(config.max_episodes, len(dataset))
    first = (planner.history_len - 1) * planner.frame_stride
    rng = np.random.default_rng(config.seed)
    probe = SignalProbe(planner, config)
    steps: list[StepSignal] = []
    try:
        for k in tqdm(range(n), desc="planning signal", disable=not progress):
            ep = dataset.load_episode(k, images=True, ground_truth=True)
            if ep.ground_truth is None:
                raise ValueError(f"{data}: episode {k} has no ground truth (needs `vidplan sim record` data)")
            ep.metadata.setdefault("episode_index", k)
            for step in approach_steps(ep, config.steps_per_episode, config.min_target_distance_m, first):
                s = probe.probe(ep, step, rng)
                if s is not None:
                    steps.append(s)
    finally:
        probe.close()
    summary = summarize(steps, config.variants)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "config": asdict(config),
        "data": str(data),
        "model_version": planner.model_version,
        "summary": summary,
        "steps": [asdict(s) for s in steps],
    }
    (out / "planning_signal.json").write_text(json.dumps(result, indent=1))
    (out / "planning_signal.md").write_text(format_table(summary) + "\n")
    return result
