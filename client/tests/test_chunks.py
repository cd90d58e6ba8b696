"""The chunk scheduler on its own: no env, no client, no threads; times and poses by hand."""

from __future__ import annotations

import numpy as np
import pytest
from vidplan_client.chunks import ChunkScheduler
from vidplan_client.convert import Plan

DT = 1 / 15
HOME = np.array([0.45, 0.0, 0.38, np.pi, 0.0, 0.0, 0.0])


def chunk(sequence: int, steps: int = 15, t0: float = 0.0, dx: float = 0.01, start: np.ndarray = HOME) -> Plan:
    """A chunk moving dx metres along x per row from ``start``; row k is for t0 + (1 + k) dt."""
    rows = np.tile(start, (steps, 1))
    rows[:, 0] += dx * (np.arange(steps) + 1)
    return Plan(session_id="s", sequence=sequence, chunk=rows, t0_s=t0, i0=1, dt_s=DT, joint_positions=np.zeros((0, 7)))


def run(s: ChunkScheduler, times, reference=HOME) -> list[int | None]:
    rows = []
    for t in times:
        sel = s.select(t, reference)
        rows.append(sel.row)
        if sel.row is not None:
            reference = s.commit(sel.row)
    return rows


def test_rows_follow_the_clock_within_the_open_loop_horizon():
    s = ChunkScheduler(open_loop_steps=4)
    assert s.offer(chunk(1), t=0.0) is None
    assert run(s, [k * DT for k in range(6)]) == [0, 1, 2, 3, None, None]
    assert s.plan is None  # used up: never looked at again


def test_a_late_chunk_starts_at_the_row_for_now_and_no_row_runs_twice():
    s = ChunkScheduler(open_loop_steps=8)
    s.offer(chunk(1), t=0.2)  # 3 periods late
    assert run(s, [0.2, 0.2, 0.2 + DT]) == [3, 4, 5]  # the same time twice: the next row, never the same one


def test_offer_refuses_a_chunk_whose_horizon_has_passed_and_a_newer_one_replaces_the_current():
    s = ChunkScheduler(open_loop_steps=4)
    assert "arrived too late" in s.offer(chunk(1), t=10 * DT)
    s.offer(chunk(1), t=0.0)
    run(s, [0.0, DT])
    s.offer(chunk(2, t0=DT), t=2 * DT)
    assert (s.plan.sequence, s.last_row, s.lag) == (2, -1, 0)
    assert s.select(2 * DT, HOME).row == 1  # its row 1 is for t0 + 2 dt = the next tick


def test_an_out_of_reach_row_makes_the_chunk_run_late():
    s = ChunkScheduler(open_loop_steps=8, max_translation_per_step_m=0.025)
    s.offer(chunk(1, dx=0.02), t=0.0)
    # At 2 periods the row for now is 2 (0.06 m away): row 0 (0.02 m) is the latest within reach.
    first = s.select(2 * DT, HOME)
    assert first.row == 0 and s.lag == 2
    s.commit(0)
    assert s.select(3 * DT, s.plan.chunk[0]).row == 1  # then one row per tick, two rows late


def test_no_reachable_row_drops_the_chunk_and_says_why():
    s = ChunkScheduler(open_loop_steps=8)
    far = HOME + np.r_[0.5, 0, 0, 0, 0, 0, 0]
    s.offer(chunk(1, start=far), t=0.0)
    sel = s.select(0.0, HOME)
    assert sel.row is None and sel.dropped and sel.unused and "out of reach" in sel.reason and s.plan is None


def test_rows_left_decides_when_to_ask_again():
    s = ChunkScheduler(open_loop_steps=8)
    assert s.rows_left(0.0) is None
    s.offer(chunk(1), t=0.0)
    assert s.rows_left(0.0) == 7 and s.rows_left(5 * DT) == 2 and s.rows_left(9 * DT) is None
    with pytest.raises(ValueError):
        ChunkScheduler(open_loop_steps=0)


def test_the_unexecuted_rows_outlive_the_horizon_but_not_their_time():
    s = ChunkScheduler(open_loop_steps=4)
    assert s.unexecuted(0.0) is None  # nothing commanded yet
    plan = chunk(1)
    s.offer(plan, t=0.0)
    assert run(s, [k * DT for k in range(6)]) == [0, 1, 2, 3, None, None]
    # Rows 0-3 ran; at t = 4 dt the row for now is 4, and the used-up chunk's rows 4.. are still its intent.
    np.testing.assert_allclose(s.unexecuted(4 * DT), plan.chunk[4:])
    np.testing.assert_allclose(s.unexecuted(10 * DT), plan.chunk[10:])  # held 6 ticks: those rows passed
    assert s.unexecuted(20 * DT) is None  # all in the past
