"""The refined chunk at the control rate: the proposal moved by what refinement changed at the knots."""

from __future__ import annotations

import numpy as np

from vidplan_server.planning.refine import control_chunk

STRIDE, H = 3, 5


def _policy_like_chunk() -> np.ndarray:
    """A curved path whose gripper closes at one control step (step 7): what a policy returns."""
    rng = np.random.default_rng(0)
    chunk = np.zeros((STRIDE * H, 7))
    chunk[:, :3] = np.cumsum(rng.normal(0, 0.01, (STRIDE * H, 3)), 0) + [0.5, 0.0, 0.2]
    chunk[:, 3:6] = [np.pi, 0.0, 0.1]
    chunk[7:, 6] = 1.0
    return chunk


def test_unchanged_knots_give_back_the_proposal_exactly():
    chunk = _policy_like_chunk()
    knots = chunk[STRIDE - 1 :: STRIDE]
    np.testing.assert_array_equal(control_chunk(knots, chunk, STRIDE), chunk)


def test_a_knot_change_is_spread_linearly_and_keeps_the_gripper_step():
    chunk = _policy_like_chunk()
    knots = chunk[STRIDE - 1 :: STRIDE].copy()
    knots[1, 0] += 0.03  # the second knot (control step 5) moves 3 cm along x
    out = control_chunk(knots, chunk, STRIDE)
    change = out[:, 0] - chunk[:, 0]
    np.testing.assert_array_equal(change[:3], 0.0)  # up to the unchanged first knot (step 2) nothing moves,
    np.testing.assert_allclose(change[2:9], 0.01 * np.array([0, 1, 2, 3, 2, 1, 0]), atol=1e-12)  # then a ramp
    np.testing.assert_array_equal(change[9:], 0.0)
    np.testing.assert_array_equal(out[:, 6], chunk[:, 6])  # the gripper still closes at step 7, not smeared
    np.testing.assert_array_equal(out[:, 3:6], chunk[:, 3:6])  # orientations are the proposal's
