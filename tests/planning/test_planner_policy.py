"""The planner with a policy in the bundle: policy samples as proposals, the policy-only baseline mode."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from vidplan_server.planning.limits import check_chunk
from vidplan_server.planning.offline import request_from_episode
from vidplan_server.planning.planner import Planner, PlannerConfig
from vidplan_server.planning.types import PlanningError, PlanOptions

FAST = PlanOptions(num_proposals=8, refine_iters=0)


@pytest.fixture(scope="module")
def planner(tiny_policy_bundle):
    return Planner.load(tiny_policy_bundle, config=PlannerConfig(policy_samples=3))


@pytest.fixture(scope="module")
def request0(planner, short_episodes):
    return request_from_episode(short_episodes[0], 9, planner.history_len, planner.frame_stride, FAST)


def opts(req, **kw):
    return replace(req, options=replace(req.options, **kw))


def test_proposals_mix_policy_samples_then_the_basis(planner, request0):
    r = planner.plan(request0)
    assert r.proposal_kinds[:3] == ["policy:0", "policy:1", "policy:2"]
    assert all(k.startswith("basis:") for k in r.proposal_kinds[3:]) and len(r.proposal_kinds) == 8
    assert planner.info().as_dict()["modes"] == ["plan", "policy"]


def test_per_request_mix_and_perturbations(planner, request0):
    r = planner.plan(opts(request0, policy_samples=2, policy_perturbations=3))
    assert r.proposal_kinds[:5] == ["policy:0", "policy:1", "policy:0~1", "policy:1~1", "policy:0~2"]
    r0 = planner.plan(opts(request0, policy_samples=0))
    assert all(k.startswith("basis:") for k in r0.proposal_kinds)


def test_a_nominal_chunk_replaces_the_policy_samples(planner, request0):
    pose = np.r_[request0.state.cartesian_position, 0.0]
    nominal = np.repeat(pose[None], 15, 0)
    r = planner.plan(replace(opts(request0, nominal_perturbations=2), nominal=nominal))
    assert r.proposal_kinds[:3] == ["nominal", "nominal~1", "nominal~2"]
    assert not any(k.startswith("policy") for k in r.proposal_kinds)


def test_policy_mode_is_the_baseline_without_the_world_model(planner, request0):
    a = planner.plan(opts(request0, mode="policy", seed=3))
    b = planner.plan(opts(request0, mode="policy", seed=3))
    c = planner.plan(opts(request0, mode="policy", seed=4))
    assert a.actions.shape == (planner.chunk_steps, 7) and np.array_equal(a.actions, b.actions)
    assert not np.array_equal(a.actions, c.actions)
    assert a.proposal_kinds == ["policy:0"] and a.uncertainty.shape == (0,) and a.timings_ms["rollout"] == 0
    assert (
        check_chunk(
            a.actions, request0.state.cartesian_position, planner.config.limits, a.joint_positions, planner.kinematics
        )
        == []
    )
    # The same seed's first policy sample is the plan's first proposal before feasibility projection.
    sample = planner.policy_chunks(opts(request0, seed=3), 1)[0]
    assert np.allclose(a.actions[:, 6], np.clip(sample[:, 6], 0, 1), atol=1e-6)


def test_policy_temperature_scales_the_samples_spread(planner, request0):
    """The samples start from the flow noise times ``policy_temperature``: the same draw, colder, lands closer together;
    near zero every sample is the same chunk (the flow is a smooth map of its starting noise)."""
    spreads, config = [], planner.config
    try:
        for t in (1.0, 0.5, 1e-4):
            planner.config = replace(config, policy_temperature=t)
            chunks = planner.policy_chunks(opts(request0, seed=5), 6)
            spreads.append(float(chunks[..., :3].std(0).mean()))
    finally:
        planner.config = config
    assert spreads[0] > spreads[1] > spreads[2] and spreads[2] < 0.01 * spreads[0]
    for bad in (0.0, -1.0, 5.0, float("nan")):
        with pytest.raises(ValueError, match="policy_temperature"):
            PlannerConfig(policy_temperature=bad)


def test_bad_mode_and_mix_name_the_field(planner, request0):
    with pytest.raises(PlanningError, match="options.mode"):
        planner.plan(opts(request0, mode="dream"))
    with pytest.raises(PlanningError, match="options.policy_samples"):
        planner.plan(opts(request0, policy_samples=-1))


def test_policy_mode_needs_a_policy(tiny_heads_bundle, short_episodes):
    planner = Planner.load(tiny_heads_bundle)
    req = request_from_episode(
        short_episodes[0], 9, planner.history_len, planner.frame_stride, PlanOptions(mode="policy")
    )
    with pytest.raises(PlanningError, match="options.mode.*policy module"):
        planner.plan(req)
    assert planner.info().as_dict()["modes"] == ["plan"]


def test_policy_sampling_takes_every_valid_seed(planner, request0):
    r = planner.plan(opts(request0, mode="policy", seed=2**64 - 1))
    assert np.isfinite(r.actions).all()


def test_pulled_samples_need_a_located_target(tiny_policy_bundle, request0, monkeypatch):
    config = PlannerConfig(policy_samples=3, policy_pulls=2)
    planner = Planner.load(tiny_policy_bundle, config=config)
    assert planner.locator is None  # this bundle has no locator: no goal, so no pulled samples
    r = planner.plan(request0)
    assert r.proposal_kinds[:3] == ["policy:0", "policy:1", "policy:2"] and not any(
        ">goal" in k for k in r.proposal_kinds
    )
    located = []

    def far_goal(history, text, frames=None):  # a locator that puts the object 30 cm ahead of the hand
        located.append(history.shape)
        return np.asarray(request0.state.cartesian_position[:3]) + [0.3, 0.0, -0.2]

    monkeypatch.setattr(planner, "locate_target", far_goal)
    r = planner.plan(request0)
    assert r.proposal_kinds[:5] == ["policy:0", "policy:1", "policy:2", "policy:0>goal", "policy:1>goal"]
    assert located and located[0][0] == 1  # located once per plan, from the request's own history
    lim = planner.config.limits
    assert check_chunk(r.actions, np.asarray(request0.state.cartesian_position), lim) == []
    with pytest.raises(ValueError, match="policy_pulls"):
        PlannerConfig(policy_pulls=-1)


def test_progress_when_closed_false_counts_the_term_only_while_open(tiny_policy_bundle, request0, monkeypatch):
    import torch

    from vidplan_server.models.progress import LocatorConfig

    class Ahead(torch.nn.Module):  # a locator double that reads the request's frames
        config = LocatorConfig(map_source="frames")

    assert PlannerConfig().progress_when_closed  # the default keeps the term (planning/planner.py says why)
    planner = Planner.load(tiny_policy_bundle, config=PlannerConfig(policy_samples=3, progress_when_closed=False))
    ahead = np.asarray(request0.state.cartesian_position[:3]) + [0.3, 0.0, -0.2]  # the object, 30 cm ahead
    monkeypatch.setattr(planner, "locator", Ahead())
    monkeypatch.setattr(planner, "locate_target", lambda history, text, frames=None: ahead)
    assert request0.state.gripper_position < 0.5
    assert any(n.startswith("progress: instructed object located") for n in planner.plan(request0).notes)
    closed = replace(request0, state=replace(request0.state, gripper_position=0.9))
    r = planner.plan(closed)
    assert any("gripper is closed" in n for n in r.notes) and np.isfinite(r.proposal_scores).all()
    # Without the term the scores of a closed-gripper plan do not depend on where the object is.
    monkeypatch.setattr(planner, "locate_target", lambda history, text, frames=None: ahead + 1.0)
    assert np.allclose(planner.plan(closed).proposal_scores, r.proposal_scores)
    monkeypatch.setattr(planner, "config", replace(planner.config, progress_when_closed=True))
    kept = planner.plan(closed)
    assert any(n.startswith("progress: instructed object located") for n in kept.notes)
    assert not np.allclose(kept.proposal_scores, r.proposal_scores)


def test_goal_samples_take_the_last_policy_slots_while_the_gripper_is_open(tiny_goal_bundle, request0, monkeypatch):
    planner = Planner.load(tiny_goal_bundle, config=PlannerConfig(policy_samples=4, goal_samples=2))
    assert planner.goal_policy is not None and planner.goal_policy.config.target_map
    assert request0.state.gripper_position < 0.5
    maps = []
    score = planner.semantic.score
    monkeypatch.setattr(
        planner.semantic, "score", lambda images, text: maps.append(images.shape) or score(images, text)
    )
    r = planner.plan(request0)
    assert r.proposal_kinds[:5] == ["policy:0", "policy:1", "goal:0", "goal:1", "basis:+x"]
    assert (3, 3, 64, 64) in maps  # the three current views at the policy's size, once per plan
    # The goal samples have a noise stream of their own: the policy's samples are those of a plan without them.
    alone = Planner.load(tiny_goal_bundle, config=PlannerConfig(policy_samples=2))
    assert np.array_equal(alone.policy_chunks(request0, 2), planner.policy_chunks(request0, 2))
    assert np.array_equal(planner.policy_chunks(request0, 2, goal=True), planner.policy_chunks(request0, 2, goal=True))
    holding = replace(request0, state=replace(request0.state, gripper_position=0.9))
    assert planner.plan(holding).proposal_kinds[:4] == ["policy:0", "policy:1", "policy:2", "policy:3"]
    with pytest.raises(ValueError, match="goal_samples"):
        PlannerConfig(goal_samples=-1)


def test_goal_first_makes_the_goal_policys_coherent_sample_the_incumbent(tiny_goal_bundle, request0):
    """``goal_first``: the goal samples lead, the one continuing the running chunk at index 0 (the kept chunk), and
    the policy's samples follow as challengers; with the gripper closed nothing changes (no goal samples)."""
    config = PlannerConfig(policy_samples=4, goal_samples=2, goal_first=True)
    planner = Planner.load(tiny_goal_bundle, config=config)
    req = opts(request0, seed=3)
    goal = planner.policy_chunks(req, 2, goal=True)
    reference = goal[1, :8]
    r = planner.plan(replace(req, reference=reference))
    assert r.proposal_kinds[:5] == ["goal:0", "goal:1", "policy:0", "policy:1", "basis:+x"]
    # The tiny goal policy's samples differ by about a millimetre, which the feasibility step can blur: lead with
    # two that differ by 3 cm instead, the second continuing the reference.
    apart = np.repeat(goal[:1], 2, 0)
    apart[1, :, 0] += 0.03
    drawn = planner.policy_chunks
    planner.policy_chunks = lambda r, count, goal=False: apart[:count] if goal else drawn(r, count)
    props = planner.propose(replace(req, reference=apart[1, :8]), 8, np.random.default_rng(0))
    planner.policy_chunks = drawn
    first = props.actions[0, :, :3]
    assert np.abs(first - apart[1, :, :3]).max() < np.abs(first - apart[0, :, :3]).max()  # the coherent one leads
    holding = replace(req, state=replace(req.state, gripper_position=0.9))
    assert planner.plan(holding).proposal_kinds[:4] == ["policy:0", "policy:1", "policy:2", "policy:3"]
    # Without it the policy's samples lead, as before.
    plain = Planner.load(tiny_goal_bundle, config=replace(config, goal_first=False))
    assert plain.plan(req).proposal_kinds[:4] == ["policy:0", "policy:1", "goal:0", "goal:1"]


def test_mix_radius_draws_the_policys_samples_only_near_the_located_object(tiny_goal_bundle, request0):
    """``mix_radius``: the policy's samples join the goal samples only while the hand is within the radius of the
    located object, horizontally; farther away, or with nothing located, all samples are the goal policy's."""
    config = PlannerConfig(policy_samples=4, goal_samples=2, goal_first=True, mix_radius=0.08)
    planner = Planner.load(tiny_goal_bundle, config=config)
    req = opts(request0, seed=3)
    hand = np.asarray(req.state.cartesian_position[:3], dtype=np.float64)
    rng = np.random.default_rng

    def kinds(located):
        return planner.propose(req, 8, rng(0), located=located).kinds[:5]

    mixed = ["goal:0", "goal:1", "policy:0", "policy:1", "basis:+x"]
    assert kinds(hand + [0.05, 0.0, -0.3]) == mixed  # 5 cm away in the table plane; height does not count
    assert kinds(hand + [0.06, 0.06, 0.0]) == ["goal:0", "goal:1", "goal:2", "goal:3", "basis:+x"]  # 8.5 cm
    assert kinds(None) == kinds(np.full(3, np.nan)) == ["goal:0", "goal:1", "goal:2", "goal:3", "basis:+x"]
    # This bundle has no locator, so a plan finds nothing and draws goal samples only; at radius 0, mixed as before.
    assert planner.plan(req).proposal_kinds[:5] == ["goal:0", "goal:1", "goal:2", "goal:3", "basis:+x"]
    everywhere = Planner.load(tiny_goal_bundle, config=replace(config, mix_radius=0.0))
    assert everywhere.plan(req).proposal_kinds[:5] == mixed
    holding = replace(req, state=replace(req.state, gripper_position=0.9))
    assert planner.propose(holding, 8, rng(0), located=hand).kinds[:4] == [f"policy:{k}" for k in range(4)]
    with pytest.raises(ValueError, match="mix_radius"):
        PlannerConfig(mix_radius=-0.1)


def test_mix_known_words_keeps_the_policys_samples_out_where_it_does_not_know_a_word(tiny_goal_bundle, request0):
    """``mix_known_words``: the policy's samples join the goal samples only when every word of the instruction is
    in the policy's vocabulary; a word it never trained on (an object the robot data never showed) leaves all
    samples to the goal policy."""
    from vidplan_server.planning.policy_samples import knows_words

    config = PlannerConfig(policy_samples=4, goal_samples=2, goal_first=True, mix_known_words=True)
    planner = Planner.load(tiny_goal_bundle, config=config)
    vocab = planner.policy.config.vocab  # the words of the tiny policy's training instructions
    req = replace(opts(request0, seed=3), instruction=f"pick up the {' '.join(vocab[-2:])}")
    unknown = f"pick up the zorbly {vocab[-1]}"  # a colour it never trained on
    assert {"pick", "up", "the"} <= set(vocab) and vocab[-1] not in ("pick", "up", "the")
    assert knows_words(planner.policy, req.instruction) and knows_words(planner.policy, req.instruction.upper())
    assert not knows_words(planner.policy, unknown)
    mixed = ["goal:0", "goal:1", "policy:0", "policy:1", "basis:+x"]
    assert planner.plan(req).proposal_kinds[:5] == mixed
    assert planner.plan(replace(req, instruction=unknown)).proposal_kinds[:5] == [f"goal:{k}" for k in range(4)] + [
        "basis:+x"
    ]
    plain = Planner.load(tiny_goal_bundle, config=replace(config, mix_known_words=False))
    assert plain.plan(replace(req, instruction=unknown)).proposal_kinds[:5] == mixed
    holding = replace(req, instruction=unknown, state=replace(req.state, gripper_position=0.9))
    assert planner.plan(holding).proposal_kinds[:4] == [f"policy:{k}" for k in range(4)]  # no goal samples when held
    # A policy without a vocabulary is taken to know every word.
    assert knows_words(type("P", (), {"config": type("C", (), {"vocab": ()})()})(), "anything at all")


def test_coherent_index_keeps_the_sample_that_continues_the_running_chunk():
    from vidplan_server.planning.policy_samples import coherent_first, coherent_index

    chunks = np.zeros((3, 15, 7))
    chunks[0, :, 0], chunks[1, :, 0], chunks[2, :, 0] = 0.30, 0.50, 0.52  # x of each sample's rows, m
    reference = np.zeros((7, 7))
    reference[:, 0] = 0.51
    assert coherent_index(chunks, None) == 0 and coherent_index(chunks[:1], reference) == 0
    assert coherent_index(chunks, reference) in (1, 2)
    # Equal distances: the gripper breaks the tie (the reference closes, sample 2 closes too).
    reference[:, 6], chunks[2, :, 6] = 1.0, 1.0
    assert coherent_index(chunks, reference) == 2
    first = coherent_first(chunks, reference)
    assert np.array_equal(first[0], chunks[2]) and np.array_equal(first[2], chunks[0])
    assert coherent_first(None, reference) is None


def test_policy_mode_with_a_reference_answers_the_coherent_draw(planner, request0):
    req = opts(request0, mode="policy", seed=3)
    draws = planner.policy_chunks(req, planner.config.coherence_samples)
    far = int(np.argmax(np.linalg.norm(draws[:, -1, :3] - draws[0, -1, :3], axis=-1)))
    assert far != 0
    r = planner.plan(replace(req, reference=draws[far, :8]))
    assert r.proposal_kinds == [f"policy:{far}"]
    assert np.allclose(r.actions[:, 6], np.clip(draws[far, :, 6], 0, 1), atol=1e-6)
    # Without one, the single draw (sample 0 of the same noise stream).
    assert planner.plan(req).proposal_kinds == ["policy:0"]


def test_a_plan_puts_the_coherent_sample_first_as_the_incumbent(planner, request0):
    req = opts(request0, seed=3)
    draws = planner.policy_chunks(req, 3)
    r = planner.plan(replace(req, reference=draws[2, :8]))
    proposals = planner.propose(replace(req, reference=draws[2, :8]), 8, np.random.default_rng(0))
    first = proposals.actions[0, :, :3]
    assert r.proposal_kinds[0] == "policy:0" and proposals.kinds[0] == "policy:0"
    assert np.abs(first - draws[2, :, :3]).max() < np.abs(first - draws[0, :, :3]).max()


def test_a_bad_reference_names_the_field(planner, request0):
    with pytest.raises(PlanningError, match="reference"):
        planner.plan(replace(request0, reference=np.zeros((4, 6))))
