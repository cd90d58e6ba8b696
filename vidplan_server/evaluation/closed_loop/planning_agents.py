"""The learned agents of the closed-loop benchmark, all on one checkpoint bundle and one :class:`Planner`:

================= =================================================================================================
``policy``        the bundle's policy alone (``PlanOptions(mode="policy")``): the baseline, no world model
``goal-policy``   the bundle's goal policy alone (it reads the semantic encoder's map of the instruction), the
                  policy once the gripper is closed: one proposal per plan, no choice (``num_proposals`` 1,
                  ``goal_samples`` 1; the world model still rolls that one out). It separates what the goal
                  policy's proposals bring from what the world model's choice among them brings
``vidplan``       VidPlan at the planner's defaults: 12 policy samples, UQ-weighted score, the policy's own sample
                  kept unless beaten by ``keep_margin``, no refinement (``PlannerConfig`` says why)
``vidplan-no-uq`` the same with the uncertainty weight switched off in selection and refinement (``weighting
                  "none"``): what the planner does when it trusts every hallucination
``vidplan-basis`` VidPlan without the policy: the Jacobian basis bank only (``policy_samples`` 0)
================= =================================================================================================

Each builds the plan request from the runner's observation history the way the server does from a robot's stream:
the T history frames are the observations ``(T - 1 - j) * frame_stride`` control steps before the current one (the
earliest observation repeated at an episode's start), the state is the current one. Every call is seeded with
``seed + episode seed + step`` so an episode replays identically, and agents differ only in what they are. Each
call also carries the rows of the agent's last chunk that the runner has not executed yet as the request's
``reference`` (what a robot client knows of the chunk it is running), so the policy's samples continue it
(``planning/policy_samples.py``, backward coherence).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from vidplan_server.data.schema import CAMERA_NAMES
from vidplan_server.evaluation.closed_loop.agents import AgentStep, AgentUnavailable
from vidplan_server.planning.types import PlanOptions, PlanRequest, RobotState

PLANNING_AGENTS = ("policy", "goal-policy", "vidplan", "vidplan-no-uq", "vidplan-basis")


def request_from_history(
    history: list[dict], instruction: str, history_len: int, frame_stride: int, options: PlanOptions
) -> PlanRequest:
    """A plan request from DROID-style observation dicts (oldest first, the current one last)."""
    idx = [max(len(history) - 1 - (history_len - 1 - j) * frame_stride, 0) for j in range(history_len)]
    frames = np.stack([np.stack([history[i]["image"][c] for c in CAMERA_NAMES]) for i in idx])
    rs = history[-1]["robot_state"]
    state = RobotState(
        np.asarray(rs["joint_positions"], dtype=np.float64),
        np.asarray(rs["cartesian_position"], dtype=np.float64),
        float(rs["gripper_position"]),
    )
    return PlanRequest(instruction, frames, state, options=options)


class PlannerAgent:
    """One of :data:`PLANNING_AGENTS` on a loaded planner."""

    def __init__(self, name: str, planner, options: PlanOptions, heatmaps: bool = True) -> None:
        self.name = name
        self.planner = planner
        self.options = replace(options, return_heatmaps=heatmaps and options.mode == "plan")
        self._seed = 0
        self._last: tuple[int, np.ndarray] | None = None  # (step planned at, the chunk answered) of the last call

    def reset(self, env, seed: int) -> None:
        self._seed = int(seed)
        self._last = None

    def reference(self, step: int) -> np.ndarray | None:
        """The rows (R, 7) of the last chunk not executed by ``step`` (None at the start or once it ran out)."""
        if self._last is None:
            return None
        planned_at, chunk = self._last
        done = step - planned_at
        return chunk[done:] if 0 < done < len(chunk) else None

    def act(self, history: list[dict], instruction: str) -> AgentStep:
        step = int(history[-1]["timestamp"]["step"])
        opts = replace(self.options, seed=(self.options.seed + self._seed + step) % 2**63)
        pl = self.planner
        req = request_from_history(history, instruction, pl.history_len, pl.frame_stride, opts)
        req = replace(req, reference=self.reference(step))
        t0 = time.perf_counter()
        result = pl.plan(req)
        self._last = (step, np.asarray(result.actions, dtype=np.float64))
        info = {
            "kind": result.proposal_kinds[result.winner],
            "plan_ms": (time.perf_counter() - t0) * 1e3,
            "confidence": float(result.confidence),
        }
        if result.heatmaps is not None:
            info["heatmaps"] = result.heatmaps
        return AgentStep(np.asarray(result.actions, dtype=np.float64), info)


def build_planning_agent(
    name: str,
    ckpt: Path | str | None = None,
    device: str = "cpu",
    seed: int = 0,
    heatmaps: bool = True,
    **planner_options,
) -> PlannerAgent:
    """The agent ``name`` on the bundle at ``ckpt`` (default: the bundled one). ``planner_options`` override
    :class:`~vidplan_server.planning.planner.PlannerConfig` fields (e.g. ``num_proposals``, ``refine_iters``)."""
    from vidplan_server.planning.planner import Planner, PlannerConfig

    if name not in PLANNING_AGENTS:
        raise AgentUnavailable(f"agent {name!r}: not a planning agent; choose from {', '.join(PLANNING_AGENTS)}")
    config = replace(PlannerConfig(), **planner_options)
    options = PlanOptions(seed=seed)
    if name == "policy":
        options = replace(options, mode="policy")
    elif name == "vidplan-no-uq":
        config = replace(config, score=replace(config.score, weighting="none"))
    elif name == "vidplan-basis":
        options = replace(options, policy_samples=0)
    elif name == "goal-policy":
        config = replace(config, num_proposals=1, policy_samples=1, goal_samples=1)
    planner = Planner.load(ckpt, device=device, config=config)
    if name in ("policy", "goal-policy") and planner.policy is None:
        raise AgentUnavailable(f"agent {name!r}: the checkpoint has no policy module (`vidplan train policy`)")
    if name == "goal-policy" and planner.goal_policy is None:
        raise AgentUnavailable(
            f"agent {name!r}: the checkpoint has no goal_policy module (`vidplan train policy --target-map`)"
        )
    return PlannerAgent(name, planner, options, heatmaps)
