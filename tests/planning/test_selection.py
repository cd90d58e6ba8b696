import numpy as np
import pytest

from vidplan_server.planning.selection import select

KINDS = ["policy:0", "policy:1", "policy:2", "basis:+x"]


def test_the_best_score_wins_when_it_clears_the_margin():
    s = select(np.array([0.10, 0.12, 0.30, 0.0]), KINDS, 0.05)
    assert (s.winner, s.best, s.kept) == (2, 2, False)
    assert s.note(np.zeros(4), KINDS, 0.05) is None


def test_the_policys_own_sample_is_kept_within_the_margin():
    scores = np.array([0.10, 0.14, 0.12, 0.0])
    s = select(scores, KINDS, 0.05)
    assert (s.winner, s.best, s.kept) == (0, 1, True)
    assert (
        s.note(scores, KINDS, 0.05)
        == "kept policy:0: the best proposal (policy:1) beat it by 0.0400, within the margin 0.05"
    )


def test_margin_zero_is_the_plain_argmax_and_ties_keep_the_incumbent():
    assert select(np.array([0.1, 0.1000001, 0.0]), KINDS[:3], 0.0).winner == 1
    assert select(np.array([0.2, 0.2, 0.0]), KINDS[:3], 0.0).winner == 0  # argmax of a tie is the first


@pytest.mark.parametrize("kinds", [["basis:+x", "basis:-x", "basis:+y"], ["policy:1", "policy:0", "nominal"], []])
def test_without_an_incumbent_first_the_argmax_wins(kinds):
    scores = np.array([0.10, 0.11, 0.0])[: max(len(kinds), 1)]
    expected = int(np.argmax(scores))
    assert select(scores, kinds, 0.05).winner == expected


def test_a_nominal_is_an_incumbent_and_a_negative_margin_is_refused():
    assert select(np.array([0.0, 0.01]), ["nominal", "nominal~1"], 0.02).kept
    # the goal policy's first sample, when the proposals start with it, too; a later goal sample is no incumbent
    assert select(np.array([0.0, 0.01]), ["goal:0", "goal:1"], 0.02).kept
    assert select(np.array([0.0, 0.01, 0.03]), ["policy:0", "goal:0", "goal:1"], 0.02).winner == 2
    assert not select(np.array([0.0, 0.01]), ["goal:1", "goal:0"], 0.02).kept
    with pytest.raises(ValueError, match="margin"):
        select(np.array([0.0, 0.01]), ["nominal", "nominal~1"], -1.0)


def test_a_switch_is_confirmed_only_when_every_redraw_agrees():
    from vidplan_server.planning.selection import confirmed

    assert confirmed(np.array([0.01, 0.02, 0.005]), 0.0)
    assert not confirmed(np.array([0.01, -0.001, 0.02]), 0.0)
    assert not confirmed(np.array([0.01, 0.003]), 0.004)  # each gap must clear the margin
    assert not confirmed(np.array([]), 0.0)


@pytest.mark.parametrize("change", [{"keep_margin": -0.1}, {"keep_margin": float("nan")}, {"keep_draws": -1}])
def test_the_planner_config_refuses_a_bad_keep_rule(change):
    from vidplan_server.planning.planner import PlannerConfig

    with pytest.raises(ValueError, match=next(iter(change))):
        PlannerConfig(**change)
