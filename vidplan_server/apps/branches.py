"""Online world-model data: the planner's own proposals, executed in the simulator from recorded states.

Why (measured, ``train world``'s ``action_gain``): the world model trained on the expert's episodes alone
ignores its actions -- the held-out MSE with another window's actions is the same as with its own (action gain
-0.003 for the EDM model, +0.007 for the flow map of the bundled checkpoint), and under one shared noise draw
the rollouts of twelve different proposals differ by 0.01 (mean absolute latent difference) where the
simulator's renders of the same proposals differ by 0.17. In expert data the next frames are predictable from
the history alone (the expert always moves on toward its target at its usual speed), so the model never had to
read the actions; the planner, however, asks it about proposals the expert never made (basis directions, policy
samples). Branches break that correlation: from one recorded state, several different chunks, each with its
real outcome -- the data "online world modeling" (arXiv 2512.09929) collects for the same train-test gap.

One branch set (of the world model's training recording, or of the UQ head's calibration recording; never of
the data a model is evaluated on, and ``ood`` recordings are refused): a recorded episode
and a step t (t >= stride * (T - 1), so the T history frames are real; the gripper open, because a reset cannot
rebuild a grasp) are rebuilt in the simulator (:class:`~vidplan_server.evaluation.sim_oracle.SimOracle`); the
planner proposes ``proposals`` chunks for that step as it would when serving (the bundle's policy samples and
the Jacobian basis, ``policy_samples`` of them from the policy), and each is executed from the same state and
rendered at the model's frame times. Stored per branch: the T recorded history frames and the H rendered ones,
the H knot actions (absolute, as the world model reads them) and the proposal's kind.

Output, resumable: ``OUT/branches.json`` (options; resuming with others is refused) and one
``OUT/shards/<i>.npz`` per recorded state, written atomically: ``frames`` (K, T + H, V, h, w, 3) uint8 (history
oldest first, then the future), ``actions`` (K, H, 7) float32, ``kinds`` (K,) str, ``episode``, ``step``.
:func:`~vidplan_server.data.branches.read_branches` reads a folder back; ``vidplan train world --extra-data``
trains on it (:func:`~vidplan_server.data.windows.branch_windows`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vidplan_server.data.branches import MANIFEST, shard_file
from vidplan_server.data.npz import write_npz_atomic
from vidplan_server.data.schema import CAMERA_NAMES


class BranchError(Exception):
    """Branch recording cannot run as asked; the message names the option."""


@dataclass(frozen=True)
class BranchConfig:
    states: int = 500  # recorded states to branch from
    proposals: int = 10  # chunks executed per state
    policy_samples: int = 4  # of them from the bundle's policy (the rest: the Jacobian basis bank)
    seed: int = 0  # picks the states and seeds the proposals

    def __post_init__(self) -> None:
        if self.states < 1 or self.proposals < 1:
            raise BranchError(f"--states and --proposals must be >= 1, got {self.states} and {self.proposals}")
        if not 0 <= self.policy_samples <= self.proposals:
            raise BranchError(f"--policy-samples must be in 0..--proposals, got {self.policy_samples}")


def pick_states(
    lengths: list[int], grippers: list[np.ndarray], count: int, first: int, seed: int
) -> list[tuple[int, int]]:
    """``count`` distinct (episode, step) pairs, uniformly among steps >= ``first`` with the gripper open
    (< 0.1) and a full chunk left in the episode is not needed (the branch's own chunk is executed)."""
    candidates = [
        (e, t)
        for e, (n, g) in enumerate(zip(lengths, grippers, strict=True))
        for t in range(first, n)
        if float(g[t]) < 0.1
    ]
    if not candidates:
        raise BranchError("the recording has no step with the gripper open after the history frames")
    rng = np.random.default_rng(seed)
    take = rng.choice(len(candidates), size=min(count, len(candidates)), replace=False)
    return sorted(candidates[i] for i in take)


def record_branches(
    data: Path, ckpt: Path | str | None, out: Path, config: BranchConfig = BranchConfig(), progress: bool = True
) -> dict:
    """Record the branches of ``config.states`` states of recording ``data`` into ``out`` (module docstring);
    states already there are skipped. Returns a summary: states, new, branches (new), seconds."""
    from vidplan_server.data.reader import EpisodeDataset
    from vidplan_server.evaluation.sim_oracle import SimOracle
    from vidplan_server.planning.offline import request_from_episode
    from vidplan_server.planning.planner import Planner
    from vidplan_server.planning.types import PlanOptions

    dataset = EpisodeDataset(data)
    planner = Planner.load(ckpt)
    T, H, stride = planner.history_len, planner.horizon, planner.frame_stride
    out.mkdir(parents=True, exist_ok=True)
    wanted = {
        **asdict(config),
        "data": str(Path(data).resolve()),
        "ckpt": str(ckpt),
        "history": T,
        "horizon": H,
        "frame_stride": stride,
    }
    manifest = out / MANIFEST
    if manifest.exists():
        stored = json.loads(manifest.read_text())
        diff = [f"{k}: {stored.get(k)!r} there, {v!r} now" for k, v in wanted.items() if stored.get(k) != v]
        if diff:
            raise BranchError(
                f"--out {out} holds branches recorded with other options ({'; '.join(diff)}); use "
                "the same options to resume, or another --out"
            )
    rows = [dataset.load_episode(k, images=False, ground_truth=False) for k in range(len(dataset))]
    if rows and rows[0].metadata.get("split") == "ood":
        raise BranchError(
            f"--data {data}: an 'ood' recording; branch the training recording (world model) or "
            "a calibration recording (UQ head), never the data the models are evaluated on"
        )
    states = pick_states(
        [len(r) for r in rows],
        [r.gripper_position.reshape(-1) for r in rows],
        config.states,
        stride * (T - 1),
        config.seed,
    )
    if not manifest.exists():
        manifest.write_text(json.dumps(wanted, indent=1) + "\n")
    todo = [i for i in range(len(states)) if not shard_file(out, i).exists()]
    oracle = SimOracle()
    bar = tqdm(total=len(states), initial=len(states) - len(todo), desc="branches", unit="state", disable=not progress)
    t0, made, loaded = time.perf_counter(), 0, (-1, None)
    try:
        for i in todo:
            e, t = states[i]
            if loaded[0] != e:
                loaded = (e, dataset.load_episode(e))
            ep = loaded[1]
            opts = PlanOptions(
                num_proposals=config.proposals, policy_samples=config.policy_samples, seed=config.seed + i
            )
            req = request_from_episode(ep, t, T, stride, opts)
            props = planner.propose(req, config.proposals, np.random.default_rng([config.seed, i]))
            oracle.load(ep, t)
            future = oracle.rollout(props.actions, stride).frames  # (K, H, V, h, w, 3)
            hist_steps = [max(t - (T - 1 - j) * stride, 0) for j in range(T)]
            hist = np.stack([np.stack([ep.images[c][s] for c in CAMERA_NAMES]) for s in hist_steps])
            K = len(props)
            frames = np.concatenate([np.broadcast_to(hist, (K, *hist.shape)), future], axis=1)
            knots = props.actions[:, stride - 1 :: stride][:, :H]
            write_npz_atomic(
                shard_file(out, i),
                {
                    "frames": frames.astype(np.uint8),
                    "actions": knots.astype(np.float32),
                    "kinds": np.array(list(props.kinds)),
                    "episode": np.array(e),
                    "step": np.array(t),
                },
            )
            made += K
            bar.update(1)
    finally:
        bar.close()
        oracle.close()
    return {"states": len(states), "new": len(todo), "branches": made, "seconds": round(time.perf_counter() - t0, 1)}
