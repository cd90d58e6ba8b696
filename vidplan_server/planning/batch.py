"""Several robots' requests planned in one batched pass (:meth:`Planner.plan_many
<vidplan_server.planning.planner.Planner.plan_many>`).

One server plans for several robots. Requests whose options let them share a rollout (the same
:meth:`~vidplan_server.planning.planner.Planner.batch_key`: flow steps k and uncertainty method) run the planner's
named steps like :meth:`~vidplan_server.planning.planner.Planner.plan`, except the two that dominate its cost:

1. per robot: ``_start`` (validation, the clock, the deadline; all robots' clocks start together, so a deadline
   counts from when the batch began), then ``_encode``, ``_propose``;
2. shared: **one** flow-map rollout of all robots' proposals (sum of N_r rows, each robot's rows from its own
   seeded noise draw, shared by its own proposals as in a lone plan) and **one** judgement (UQ head, decoding,
   semantic reward), each row against its own history latents and instruction;
3. per robot, in order of deadline: ``_finish`` (refinement, the report, heatmaps, the result), each answer
   handed out as soon as it is ready.

Same seed, same plan: every robot's proposals, noise and history latents are exactly what it would get alone, and
rows of a batched network call do not interact (group norms and attention are per sample), so its predictions and
scores differ from a lone plan only by float rounding (~1e-6) and its winner is the same; refinement runs per
robot at batch 1, as alone, so the returned chunk is the same to the last bit when the winner is.

Deadlines (anytime per request): every robot gets the informed pass (proposal, rollout, scoring). Refinement and
heatmaps then run robot after robot, earliest deadline first, and a robot's refinement stops in time for its own
deadline *and* for those of the robots still waiting behind it (each keeps :data:`FINISH_RESERVE_S` to check and
return its chunk), so one robot's refinement never makes another robot late. A request that fails (a bad field,
a robot outside the workspace, no safe chunk) fails alone; the others get their plans.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

import torch

from vidplan_server.planning.objective import Judgement
from vidplan_server.planning.types import PlanRequest, PlanResult

if TYPE_CHECKING:
    from vidplan_server.planning.call import PlanCall as _Call
    from vidplan_server.planning.planner import Planner
    from vidplan_server.planning.proposer import Proposals

#: Time (s) each robot still waiting in a batch keeps back from the refinement of the robots before it: what
#: checking its chunk (IK over 15 steps) and assembling its result take on a loaded 2-core CPU, with room.
FINISH_RESERVE_S = 0.03


@dataclass
class _Started:
    """One robot's request after its own steps (start, encode, propose), before the shared ones."""

    index: int
    call: _Call
    history: torch.Tensor  # (1, T, C, V*h, w)
    text: torch.Tensor  # (D,)
    props: Proposals
    knots: torch.Tensor  # (N, H, 7)
    noise: torch.Tensor | None = None  # (N, H, C, V*h, w)
    rows: slice = field(default_factory=lambda: slice(0))  # its rows in the batch


def plan_batch(planner: Planner, requests: Sequence[PlanRequest]) -> Iterator[tuple[int, PlanResult | Exception]]:
    """(index, result or exception) per request, in the order they finish. Requests with the same batch key share
    one rollout and one judgement; a request whose key is None, or the only one of its key, is planned alone."""
    groups: dict[tuple, list[int]] = {}
    alone: list[int] = []
    for i, req in enumerate(requests):
        key = planner.batch_key(req)
        (alone if key is None else groups.setdefault(key, [])).append(i)
    alone += [idx[0] for idx in groups.values() if len(idx) == 1]
    for i in sorted(alone):
        yield i, _alone(planner, requests[i])
    for idx in groups.values():
        if len(idx) > 1:
            yield from _shared(planner, [(i, requests[i]) for i in idx])


def _alone(planner: Planner, req: PlanRequest) -> PlanResult | Exception:
    try:
        return planner.plan(req)
    except Exception as exc:  # noqa: BLE001 - each request's own error is its answer
        return exc


def _shared(planner: Planner, items: list[tuple[int, PlanRequest]]) -> Iterator[tuple[int, PlanResult | Exception]]:
    calls = []
    for i, req in items:  # every clock and deadline starts now, before any robot's own work
        try:
            calls.append((i, planner._start(req)))
        except Exception as exc:  # noqa: BLE001 - fails alone
            yield i, exc
    started: list[_Started] = []
    for i, call in calls:
        try:
            call.start_laps()  # its encode counts from here, not from the batch's start
            history, text = planner._encode(call)
            props, knots = planner._propose(call, history, text)
        except Exception as exc:  # noqa: BLE001 - fails alone
            yield i, exc
            continue
        started.append(_Started(i, call, history, text, props, knots))
    if not started:
        return
    try:
        pred, judged, rollout_ms, score_ms = _rollout_and_judge(planner, started)
    except Exception as exc:  # noqa: BLE001 - a failure of the shared pass is every robot's
        for s in started:
            yield s.index, exc
        return
    total = sum(len(s.knots) for s in started)
    order = sorted(started, key=lambda s: (math.inf if s.call.deadline is None else s.call.deadline, s.index))
    for pos, s in enumerate(order):
        call = s.call
        call.timings["rollout"], call.timings["score"] = rollout_ms, score_ms
        call.notes.append(
            f"batch: rolled out and scored with {len(started) - 1} other robot(s)' proposals ({total} in all)"
        )
        behind = order[pos + 1 :]
        later = [
            o.call.deadline - (k + 1) * FINISH_RESERVE_S for k, o in enumerate(behind) if o.call.deadline is not None
        ]
        own = call.deadline
        if later and (own is None or min(later) < own):
            call.deadline = min(later)  # refinement and heatmaps leave time for the robots behind it
        mine = _take(judged, s.rows)
        winner = planner.choose_winner(call, mine, s.props.kinds, s.history, s.text, s.knots)
        call.start_laps()  # its refinement counts from now, not from the batch's start
        try:
            result = planner._finish(call, s.history, s.text, s.props, s.knots, s.noise, pred[s.rows], mine, winner)
        except Exception as exc:  # noqa: BLE001 - fails alone
            yield s.index, exc
            continue
        yield s.index, result


def _rollout_and_judge(planner: Planner, started: list[_Started]) -> tuple[torch.Tensor, Judgement, float, float]:
    """One flow-map rollout and one judgement of every robot's proposals; (pred, judgement, rollout ms, score ms)."""
    clock = planner.clock
    t0 = clock()
    histories, texts, start = [], [], 0
    for s in started:
        n = len(s.knots)
        s.rows = slice(start, start + n)
        start += n
        s.noise = planner.rollout_noise(n, tuple(s.history.shape[2:]), s.call.req.options.seed)
        histories.append(s.history.expand(n, *s.history.shape[1:]))
        texts.append(s.text[None].expand(n, -1))
    history = torch.cat(histories)
    k = started[0].call.counts.flow_steps  # the batch key makes it the same for all
    knots = torch.cat([s.knots for s in started])
    pred = planner.rollout(history, knots, k, torch.cat([s.noise for s in started]))
    t1 = clock()
    located = [s.call.located for s in started]
    if all(x is not None for x in located):  # each robot's own located object, on its rows
        where = torch.cat([x.reshape(1, 3).expand(len(s.knots), 3) for x, s in zip(located, started, strict=True)])
    else:
        where = None
    judged = planner.judge(pred, history, torch.cat(texts), poses=knots, located=where)
    t2 = clock()
    return pred, judged, (t1 - t0) * 1e3, (t2 - t1) * 1e3


def _take(judged: Judgement, rows: slice) -> Judgement:
    """One robot's rows of a batch's judgement."""
    parts = {f.name: getattr(judged, f.name) for f in fields(Judgement)}
    return Judgement(**{name: None if v is None else v[rows] for name, v in parts.items()})
