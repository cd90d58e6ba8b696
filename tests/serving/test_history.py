"""Picking the model's history frames by timestamp."""

from __future__ import annotations

import pytest

from vidplan_server.serving.history import select_history


def test_exact_grid_picks_frames_spacing_apart():
    times = [k / 15 for k in range(10)]  # 15 Hz
    assert select_history(times, times[9], 3, 0.2) == [3, 6, 9]


def test_jittered_frames_pick_the_nearest_and_ties_go_to_the_later():
    times = [0.0, 0.05, 0.15, 0.31, 0.4]
    # targets 0.0, 0.2, 0.4: 0.2 is nearest 0.15
    assert select_history(times, 0.4, 3, 0.2) == [0, 2, 4]
    # target 0.5 lies exactly between 0.25 and 0.75 (exact in binary): the later (fresher) frame wins
    assert select_history([0.0, 0.25, 0.75, 1.0], 1.0, 2, 0.5) == [2, 3]


def test_young_session_pads_with_the_oldest():
    assert select_history([5.0], 5.0, 4, 0.2) == [0, 0, 0, 0]
    assert select_history([5.0, 5.07], 5.07, 3, 0.2) == [0, 0, 1]


def test_order_of_candidates_does_not_matter():
    assert select_history([0.4, 0.0, 0.2], 0.4, 3, 0.2) == [1, 2, 0]


def test_bad_arguments():
    with pytest.raises(ValueError):
        select_history([], 0.0, 2, 0.2)
    with pytest.raises(ValueError):
        select_history([0.0], 0.0, 0, 0.2)
