"""Wilson and paired-difference intervals against published and hand-computed values."""

import math

import pytest

from vidplan_server.evaluation.closed_loop.stats import (
    paired_difference,
    paired_difference_from_table,
    wilson_interval,
)


@pytest.mark.parametrize(
    "successes, n, low, high",
    [
        # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I, method 3 (score)
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_newcombes_table(successes, n, low, high):
    w = wilson_interval(successes, n)
    assert w.estimate == pytest.approx(successes / n)
    assert w.low == pytest.approx(low, abs=5e-5) and w.high == pytest.approx(high, abs=5e-5)


def test_wilson_by_hand_and_edges():
    # 8 of 10 by hand: z^2 = 3.8415, centre = (0.8 + 0.19207) / 1.38415 = 0.71681,
    # half = 1.95996 / 1.38415 * sqrt(0.016 + 0.0096037) = 0.22657 -> [0.49016, 0.94331]
    w = wilson_interval(8, 10)
    assert (w.low, w.high) == pytest.approx((0.49016, 0.94331), abs=2e-5)
    assert wilson_interval(10, 10).high == 1.0 and wilson_interval(0, 10).low == 0.0
    # symmetric: x of n mirrors n - x of n
    a, b = wilson_interval(3, 17), wilson_interval(14, 17)
    assert a.low == pytest.approx(1 - b.high) and a.high == pytest.approx(1 - b.low)
    with pytest.raises(ValueError, match="n >= 1"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="0..n"):
        wilson_interval(11, 10)


def test_paired_difference_by_hand():
    # 50 pairs: 36 both succeed, 12 only A, 2 only B, 0 neither. p1 = 0.96, p2 = 0.76, D = 0.2.
    # Wilson 48/50 = [0.86542, 0.98896], 38/50 = [0.62576, 0.85703]; eh - fg = -24 < 0 so phi = -24 /
    # sqrt(48 * 2 * 38 * 12) = -0.114707. low = 0.2 - sqrt(0.09458^2 + 2 * 0.114707 * 0.09458 * 0.09703 + 0.09703^2)
    # = 0.05693; high = 0.2 + sqrt(0.13424^2 + 2 * 0.114707 * 0.13424 * 0.02896 + 0.02896^2) = 0.34043.
    d = paired_difference_from_table(36, 12, 2, 0)
    assert d.estimate == pytest.approx(0.2)
    assert (d.low, d.high) == pytest.approx((0.05693, 0.34043), abs=5e-5)
    a = [True] * 48 + [False] * 2
    b = [True] * 36 + [False] * 12 + [True] * 2
    assert paired_difference(a, b) == d


def test_paired_difference_properties():
    # swapping the agents mirrors the interval
    d, e = paired_difference_from_table(20, 9, 3, 18), paired_difference_from_table(20, 3, 9, 18)
    assert (d.estimate, d.low, d.high) == pytest.approx((-e.estimate, -e.high, -e.low))
    # no discordant pairs: the estimate is 0 and the interval holds it, narrower than the unpaired one
    same = paired_difference_from_table(30, 0, 0, 20)
    assert same.estimate == 0 and same.low < 0 < same.high
    w = wilson_interval(30, 50)
    assert same.high < math.hypot(w.high - 0.6, 0.6 - w.low)
    # a strongly positive correlation (corrected phi > 0) narrows the interval compared with phi = 0
    correlated = paired_difference_from_table(30, 6, 1, 13)
    uncorrelated_half = math.hypot(0.72 - wilson_interval(36, 50).low, wilson_interval(31, 50).high - 0.62)
    assert 0.1 - correlated.low < uncorrelated_half
    # limits stay within [-1, 1]
    extreme = paired_difference_from_table(0, 10, 0, 0)
    assert extreme.estimate == 1.0 and -1 <= extreme.low <= extreme.high <= 1
    with pytest.raises(ValueError, match="equal length"):
        paired_difference([True], [True, False])
    with pytest.raises(ValueError, match="at least one pair"):
        paired_difference([], [])
