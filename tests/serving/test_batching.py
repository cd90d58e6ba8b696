"""Cross-robot batching in the plan service: calls queued together are planned in one batch, each answered with
its own plan (as alone), a bad call fails alone, incompatible options are planned alone, and a call whose budget
cannot cover the batch waits for the next round."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

import numpy as np
import pytest

from tests.serving.doubles import call, state
from vidplan_server.planning.planner import Planner, PlannerConfig
from vidplan_server.serving.batching import BatchItem, PlanBatcher
from vidplan_server.serving.config import ServiceConfig
from vidplan_server.serving.errors import InvalidArgument
from vidplan_server.serving.messages import Options
from vidplan_server.serving.service import PlanService
from vidplan_server.serving.worker import Batched, PlannerWorker

INSTRUCTIONS = ("put the red cube in the tray", "pick up the blue duck")


@pytest.fixture(scope="module")
def planner(tiny_policy_bundle):
    return Planner.load(tiny_policy_bundle, config=PlannerConfig(policy_samples=2))


class Spy:
    """Records the requests of every batch and of every lone plan."""

    def __init__(self, planner, monkeypatch) -> None:
        self.batches: list[list] = []
        self.alone: list = []
        many, one = planner.iter_plan_many, planner.plan

        def iter_plan_many(requests):
            self.batches.append(list(requests))
            return many(requests)

        def plan(request):
            if request.instruction != "warm up":  # the service's own warm-up plan
                self.alone.append(request)
            return one(request)

        monkeypatch.setattr(planner, "iter_plan_many", iter_plan_many)
        monkeypatch.setattr(planner, "plan", plan)


def run_calls(planner, calls, **config):
    """Every call through a batching PlanService at once; replies (or errors) in call order."""
    # A long window: a batch forms when max_batch calls of one key are queued, whatever the machine's speed.
    settings = dict(max_queue=8, batch_window_s=0.5, max_batch=3) | config
    service = PlanService(planner, ServiceConfig(**settings))
    service.warmup()

    async def go():
        return await asyncio.gather(*(service.plan(c) for c in calls), return_exceptions=True)

    try:
        return asyncio.run(go())
    finally:
        service.close()


def robot(i: int, **changes):
    """Robot i's call: its own frames, instruction and seed (the seed names it in the planner's requests)."""
    options = dict(num_proposals=4, refine_iters=1, flow_steps=1, seed=i) | changes
    return call(value=40 * i, instruction=INSTRUCTIONS[i % 2], options=Options(**options))


def assert_as_alone(planner, reply, request) -> None:
    alone = planner.plan(request)
    assert reply.result.winner == alone.winner
    np.testing.assert_allclose(reply.result.actions, alone.actions, atol=1e-4)
    np.testing.assert_allclose(reply.result.proposal_scores, alone.proposal_scores, atol=1e-4)


def test_queued_calls_are_planned_in_one_batch_each_as_alone(planner, monkeypatch):
    spy = Spy(planner, monkeypatch)
    replies = run_calls(planner, [robot(i) for i in range(3)])
    assert [len(b) for b in spy.batches] == [3] and spy.alone == []
    for request in spy.batches[0]:
        reply = replies[request.options.seed]
        assert not isinstance(reply, BaseException), reply
        assert any(n.startswith("batch:") for n in reply.result.notes)
        assert_as_alone(planner, reply, request)


def test_one_bad_call_in_a_batch_fails_alone(planner, monkeypatch):
    spy = Spy(planner, monkeypatch)
    base = robot(1)  # a robot outside the workspace: valid on the wire, refused by the planner
    pose = [1.5, 0.0, 0.3, np.pi, 0.0, 0.0]
    outside = replace(base, observation=replace(base.observation, state=state(cartesian_position=pose)))
    replies = run_calls(planner, [robot(0), outside, robot(2)])
    assert [len(b) for b in spy.batches] == [3]
    assert isinstance(replies[1], InvalidArgument) and "cartesian_position" in str(replies[1])
    for request in spy.batches[0]:
        if request.options.seed != 1:
            assert_as_alone(planner, replies[request.options.seed], request)


def test_incompatible_options_are_planned_alone(planner, monkeypatch):
    spy = Spy(planner, monkeypatch)
    calls = [robot(0), robot(1, mode="policy"), robot(2, flow_steps=2), robot(3)]
    replies = run_calls(planner, calls, max_batch=2)
    assert all(not isinstance(r, BaseException) for r in replies), replies
    assert [sorted(r.options.seed for r in b) for b in spy.batches] == [[0, 3]]
    # the policy baseline and the 2-step call each in a call of their own
    assert sorted(r.options.seed for r in spy.alone) == [1, 2]
    assert replies[1].result.proposal_kinds == ["policy:0"]


# ------------------------------------------------------------------------------------------- the batch policy
class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_call_whose_budget_cannot_cover_the_batch_waits_for_the_next_round():
    """Informed pass: 50 ms per robot + 100 ms per 6 proposals; 350 ms left covers one or two robots, not three."""
    clock = Clock()

    def estimate_ms(proposals, k):
        return 50.0 * len(proposals) + 100.0 * sum(proposals) / 6

    batcher = PlanBatcher(
        object(),
        0.005,
        8,
        budget=None,
        observe=None,
        estimate_ms=estimate_ms,
        clock=clock,  # type: ignore[arg-type]
    )
    key = ("plan", 1, "bins")

    def item(deadline_in_s, proposals=6, k=key):
        deadline = None if deadline_in_s is None else clock.now + deadline_in_s
        return BatchItem(request=None, deadline_at=deadline, effort=(proposals, 1), key=k)  # type: ignore[arg-type]

    items = [item(None), item(None), item(0.35), item(None), item(None, k=("plan", 2, "bins"))]
    assert batcher.select(items) == [0, 1, 3]  # the tight one (2) would wait 450 ms in a batch of 3; 4 has k = 2
    assert batcher.select([items[2], items[0], items[1]]) == [0, 1]  # as the oldest, it gets a batch it can wait for
    assert PlanBatcher(object(), 0.005, 2, None, None, estimate_ms).select(items) == [0, 1]  # type: ignore[arg-type]


class Group:
    """A batch group that answers each item with its own value, or fails it when the item is an exception."""

    def __init__(self, window_s: float, max_size: int) -> None:
        self.window_s, self.max_size = window_s, max_size
        self.runs: list[list] = []

    def select(self, items):
        return list(range(min(len(items), self.max_size)))

    def run(self, items):
        self.runs.append(list(items))
        yield from enumerate(items)


def test_the_worker_runs_queued_batchable_calls_together_and_answers_each_its_own():
    group = Group(window_s=30.0, max_size=3)  # only the third call can close the window in time
    worker = PlannerWorker(max_queue=8)
    gate = threading.Event()
    worker.run_blocking(lambda: None)

    async def go():
        blocker = worker.reserve()
        blocked = asyncio.ensure_future(blocker.run(lambda: gate.wait(10)))  # the planner is busy ...
        items = ["a", ValueError("bad item"), "c"]
        slots = [worker.reserve() for _ in items]
        futures = [
            asyncio.ensure_future(slot.run(lambda: "alone", batch=Batched(group, item)))
            for slot, item in zip(slots, items, strict=True)
        ]
        await asyncio.sleep(0.05)
        gate.set()  # ... until all three are queued
        await blocked
        return await asyncio.gather(*futures, return_exceptions=True)

    try:
        a, bad, c = asyncio.run(go())
    finally:
        worker.shutdown()
    assert (a, c) == ("a", "c") and isinstance(bad, ValueError)
    assert len(group.runs) == 1 and len(group.runs[0]) == 3
