"""Planner.plan_many: several robots' requests in one batched rollout and judgement, each answered as if alone."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from vidplan_server.planning.offline import request_from_episode
from vidplan_server.planning.planner import Planner, PlannerConfig
from vidplan_server.planning.types import PlanningError, PlanOptions, PlanResult

OPTS = PlanOptions(num_proposals=6, refine_iters=2, flow_steps=1)


@pytest.fixture(scope="module")
def planner(tiny_policy_bundle):
    return Planner.load(tiny_policy_bundle, config=PlannerConfig(policy_samples=2))


@pytest.fixture(scope="module")
def robots(planner, short_episodes):
    """Three robots: two episodes at different steps, different instructions, seeds and proposal counts."""
    a = request_from_episode(short_episodes[0], 9, planner.history_len, planner.frame_stride, OPTS)
    b = request_from_episode(short_episodes[1], 12, planner.history_len, planner.frame_stride, OPTS)
    c = request_from_episode(short_episodes[0], 15, planner.history_len, planner.frame_stride, OPTS)
    return [
        opts(a, seed=1),
        opts(b, seed=2, num_proposals=4),
        opts(c, seed=3, refine_iters=0, return_heatmaps=True),
    ]


def opts(req, **kw):
    return replace(req, options=replace(req.options, **kw))


class RolloutSpy:
    """Counts the planner's rollout calls and their batch sizes."""

    def __init__(self, planner, monkeypatch) -> None:
        self.sizes: list[int] = []
        real = planner.rollout

        def spy(history, knots, steps, noise):
            self.sizes.append(len(knots))
            return real(history, knots, steps, noise)

        monkeypatch.setattr(planner, "rollout", spy)


def assert_same_plan(batched: PlanResult, alone: PlanResult) -> None:
    assert batched.winner == alone.winner
    assert batched.proposal_kinds == alone.proposal_kinds
    np.testing.assert_allclose(batched.actions, alone.actions, atol=1e-4)
    np.testing.assert_allclose(batched.proposal_scores, alone.proposal_scores, atol=1e-4)
    assert [s.iteration for s in batched.refinement] == [s.iteration for s in alone.refinement]
    assert batched.refined == alone.refined


def test_every_robot_gets_its_own_plan_as_if_alone(planner, robots, monkeypatch):
    alone = [planner.plan(r) for r in robots]
    spy = RolloutSpy(planner, monkeypatch)
    batched = planner.plan_many(robots)
    assert spy.sizes == [6 + 4 + 6]  # one rollout for all three robots' proposals
    for b, a, req in zip(batched, alone, robots, strict=True):
        assert isinstance(b, PlanResult)
        assert_same_plan(b, a)
        assert len(b.proposal_scores) == req.options.num_proposals
        assert any(n.startswith("batch:") for n in b.notes)
    assert batched[2].heatmaps is not None and batched[0].heatmaps is None
    # The robots really differ: a mix-up of rows would show.
    assert not np.allclose(batched[0].actions, batched[1].actions)


def test_one_bad_request_fails_alone(planner, robots):
    outside = replace(robots[1], state=replace(robots[1].state, cartesian_position=np.r_[5.0, 0, 0.3, np.pi, 0, 0]))
    bad_option = opts(robots[0], flow_steps=99)
    results = planner.plan_many([robots[0], outside, robots[2], bad_option])
    assert isinstance(results[1], PlanningError) and "state.cartesian_position" in str(results[1])
    assert isinstance(results[3], PlanningError) and "flow_steps" in str(results[3])
    for i in (0, 2):
        assert_same_plan(results[i], planner.plan(robots[i]))


def test_incompatible_options_fall_back_to_their_own_call(planner, robots, monkeypatch):
    policy_only = opts(robots[1], mode="policy")
    two_steps = opts(robots[2], flow_steps=2)
    assert planner.batch_key(policy_only) is None
    assert planner.batch_key(two_steps) != planner.batch_key(robots[0])
    alone = [planner.plan(r) for r in (robots[0], policy_only, two_steps, robots[2])]
    spy = RolloutSpy(planner, monkeypatch)
    results = planner.plan_many([robots[0], policy_only, two_steps, robots[2]])
    # robots 0 and 3 share one rollout; the 2-step request rolls out alone; the policy baseline rolls out nothing
    assert sorted(spy.sizes) == [6, 6 + 6]
    for r, a in zip(results, alone, strict=True):
        assert_same_plan(r, a)
    assert results[1].proposal_kinds == ["policy:0"]


class StepClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_deadline_inside_a_batch_is_honoured(planner, robots, monkeypatch):
    """Every refinement iteration "takes" 100 ms and every robot's encoding 50 ms: the robot with the tight
    deadline refines only as far as its deadline (counted from the batch's start) allows, the one behind it with a
    later deadline is not made late by it, and one without a deadline refines fully."""
    clock = StepClock()
    monkeypatch.setattr(planner, "clock", clock)
    real = planner._objective

    def slow_objective(*args):
        clock.now += 0.1
        return real(*args)

    monkeypatch.setattr(planner, "_objective", slow_objective)
    encode = planner._encode

    def slow_encode(call):
        clock.now += 0.05  # each robot's own encoding "takes" 50 ms: the deadlines still count from the start
        return encode(call)

    monkeypatch.setattr(planner, "_encode", slow_encode)
    answered: dict[int, float] = {}
    reqs = [
        opts(robots[0], refine_iters=5),  # no deadline
        opts(robots[1], refine_iters=5, deadline_s=0.25),
        opts(robots[2], refine_iters=5, deadline_s=0.45),
    ]
    results = {}
    for i, r in planner.iter_plan_many(reqs):
        answered[i] = clock.now
        results[i] = r
    assert list(answered) == [1, 2, 0]  # earliest deadline first, each handed out when ready
    start = 100.0
    assert answered[1] <= start + 0.25 and answered[2] <= start + 0.45
    assert results[1].deadline_hit and [s.iteration for s in results[1].refinement] == [0]
    assert results[2].deadline_hit and len(results[2].refinement) < 6
    assert not results[0].deadline_hit and len(results[0].refinement) == 6
