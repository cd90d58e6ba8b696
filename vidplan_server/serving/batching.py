"""Cross-robot batching: plan calls that arrive within a few milliseconds of each other in one batched pass.

One server serves several robots. A call the planner can batch (:meth:`Planner.batch_key
<vidplan_server.planning.planner.Planner.batch_key>` is not None) is queued tagged with the service's
:class:`PlanBatcher`. When it reaches the head of the planner's queue (:mod:`.worker`), the planner thread waits
until ``window_s`` has passed since it was queued, or until ``max_size`` calls are waiting, and then plans the
calls :meth:`PlanBatcher.select` picks in one :meth:`Planner.plan_many
<vidplan_server.planning.planner.Planner.plan_many>`: N proposals x R robots in one flow-map rollout, one
UQ / reward pass, every robot answered with its own plan as soon as it is ready (:mod:`vidplan_server.planning.batch`).

What shares a batch, decided:

- the same batch key (flow steps k and uncertainty method); other calls wait for the next round, and a call whose
  options cannot be batched at all (mode "policy", a ``uq_method`` other than "bins") is queued untagged and
  planned alone;
- the oldest call always, then the others oldest first while every member's remaining budget still covers the
  batch's minimum informed pass (encode and propose per robot, then the shared rollout and scoring, as measured
  by :class:`~vidplan_server.serving.service.InformedPass`): a robot with a tight deadline is never put in a
  batch too big to answer it in time; it is planned in the next round instead;
- at most ``max_size`` calls.

A call waiting in a window keeps its place in the queue and leaves it at its deadline or when its client goes
away, like any other. When the planner is busy, calls collect in the queue anyway and the head's window has long
passed: the batch forms at once, without waiting. ``window_s`` 0 turns batching off (every call planned alone).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from vidplan_server.planning.types import PlanRequest, PlanResult


@dataclass
class BatchItem:
    """One queued call as the batcher sees it."""

    request: PlanRequest  # deadline_s unset: the budget is set from ``deadline_at`` when the batch starts
    deadline_at: float | None  # server perf_counter (s) by which the answer is due
    effort: tuple[int, int]  # (proposals, flow steps)
    key: Hashable  # the planner's batch key
    stamps: dict[str, float] = field(default_factory=dict)  # "started": when its batch began (perf_counter s)


class PlanBatcher:
    """The batch policy and runner of one :class:`~vidplan_server.serving.service.PlanService`.

    ``budget(request, deadline_at, effort)`` gives the request with the time left as its deadline, or raises
    (DeadlineExceeded) when too little is left; ``observe(result, proposals, flow_steps)`` learns from a plan's
    timings; ``estimate_ms(proposals per robot, flow_steps)`` is the minimum informed pass of a batch (None
    before the first measurement)."""

    def __init__(
        self,
        planner: Any,
        window_s: float,
        max_size: int,
        budget: Callable[[PlanRequest, float | None, tuple[int, int]], PlanRequest],
        observe: Callable[[PlanResult, int, int], None],
        estimate_ms: Callable[[list[int], int], float | None],
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if window_s <= 0 or max_size < 2:
            raise ValueError(f"batching needs window_s > 0 and max_size >= 2, got {window_s} and {max_size}")
        self.planner = planner
        self.window_s = window_s
        self.max_size = max_size
        self._budget = budget
        self._observe = observe
        self._estimate_ms = estimate_ms
        self._clock = clock

    @staticmethod
    def available(planner: Any) -> bool:
        """Whether ``planner`` can plan batches (a stand-in planner without ``plan_many`` cannot)."""
        return callable(getattr(planner, "plan_many", None)) and callable(getattr(planner, "batch_key", None))

    def key(self, request: PlanRequest) -> Hashable | None:
        """The request's batch key, or None: plan it alone."""
        return self.planner.batch_key(request)

    def select(self, items: Sequence[BatchItem]) -> list[int]:
        """The oldest item, then the others with its key, oldest first, while every member's remaining budget
        covers the batch's informed pass; at most ``max_size``."""
        head = items[0]
        picked = [0]
        now = self._clock()
        for i in range(1, len(items)):
            if len(picked) >= self.max_size:
                break
            if items[i].key != head.key:
                continue
            members = [items[j] for j in picked] + [items[i]]
            need_ms = self._estimate_ms([m.effort[0] for m in members], head.effort[1])
            if need_ms is not None and any(
                m.deadline_at is not None and (m.deadline_at - now) * 1000.0 < need_ms for m in members
            ):
                continue
            picked.append(i)
        return picked

    def run(self, items: Sequence[BatchItem]) -> Iterator[tuple[int, PlanResult | BaseException]]:
        """Budget every call (one with too little time left fails alone), plan the rest in one batch."""
        now = self._clock()
        ready: list[tuple[int, PlanRequest]] = []
        for i, item in enumerate(items):
            item.stamps["started"] = now
            try:
                ready.append((i, self._budget(item.request, item.deadline_at, item.effort)))
            except Exception as exc:  # noqa: BLE001 - its own answer
                yield i, exc
        if not ready:
            return
        if len(ready) == 1:
            i, request = ready[0]
            try:
                result = self.planner.plan(request)
            except Exception as exc:  # noqa: BLE001 - its own answer
                yield i, exc
                return
            self._observe(result, *items[i].effort)
            yield i, result
            return
        # Its rollout and scoring times are the batch's: learnt per proposal of the whole batch (a lower bound).
        total = sum(items[i].effort[0] for i, _ in ready)
        for j, outcome in self.planner.iter_plan_many([request for _, request in ready]):
            i = ready[j][0]
            if isinstance(outcome, PlanResult):
                self._observe(outcome, total, items[i].effort[1])
            yield i, outcome
