"""The ``policy`` mode's answer (``PlanOptions(mode="policy")``): the baseline a user compares VidPlan against,
through the same API and the same safety checks, with no world model involved."""

from __future__ import annotations

import numpy as np

from vidplan_server.data.schema import DT_S
from vidplan_server.planning.call import PlanCall
from vidplan_server.planning.limits import check_chunk
from vidplan_server.planning.policy_samples import coherent_index
from vidplan_server.planning.types import PlanResult, UnsafePlanError


def policy_mode_plan(planner, call: PlanCall) -> PlanResult:
    """One chunk of ``planner``'s policy (seeded), made feasible and checked like any plan. Per-frame model outputs
    are empty and confidence is 0 (nothing judged it). With the request's reference, the coherent one of
    ``coherence_samples`` draws (``policy_samples.py``); its kind says which draw (``policy:k``)."""
    req = call.req
    draws = planner.config.coherence_samples if req.reference is not None and len(req.reference) else 1
    samples = planner.policy_chunks(req, draws)
    k = coherent_index(samples, req.reference)
    actions, joints = planner.adapter.feasible_cartesian(samples[k], call.pose0, call.q0)
    problems = check_chunk(actions, call.pose0, planner.config.limits, joints, planner.kinematics)
    if problems:
        raise UnsafePlanError(problems)
    call.lap("propose")
    call.timings["total"] = (planner.clock() - call.t_start) * 1e3
    empty = np.zeros(0)
    return PlanResult(
        actions=actions,
        joint_positions=joints,
        dt_s=DT_S,
        frame_stride=planner.frame_stride,
        uncertainty=empty,
        expected_error=empty,
        semantic_reward=empty,
        value=empty,
        confidence=0.0,
        proposal_scores=np.zeros(1),
        proposal_kinds=[f"policy:{k}"],
        winner=0,
        refinement=[],
        refined=False,
        timings_ms=call.timings,
        notes=["mode policy: the policy's own chunk, not judged by the world model"],
    )
