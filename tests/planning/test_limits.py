"""Safety limits: every kind of violation is reported, and the projection lands inside the feasible set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidplan_server.planning.limits import SafetyLimits, check_chunk, solve_joint_positions
from vidplan_server.planning.refine import project_knots
from vidplan_server.robot.panda import Q_HOME, PandaKinematics


@pytest.fixture(scope="module")
def kin():
    return PandaKinematics()


@pytest.fixture(scope="module")
def home(kin):
    return kin.fk_pose(Q_HOME)


def straight_chunk(pose0, step_m=(0.01, 0.0, 0.0), steps=15, gripper=0.0):
    chunk = np.tile(np.r_[pose0, gripper], (steps, 1))
    chunk[:, :3] += np.arange(1, steps + 1)[:, None] * np.asarray(step_m)
    return chunk


def test_a_gentle_chunk_passes_every_check(kin, home):
    chunk = straight_chunk(home)
    joints = solve_joint_positions(kin, chunk, Q_HOME)
    assert check_chunk(chunk, home, SafetyLimits(), joints, kin) == []


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda c, p: c.__setitem__((5, 2), -0.2), "workspace box"),
        (lambda c, p: c.__setitem__((slice(7, None), 0), c[7:, 0] + 0.1), "per step"),
        (lambda c, p: c.__setitem__((slice(None), slice(0, 3)), c[:, :3] + 0.08), "steps [0] move"),
        (lambda c, p: c.__setitem__((slice(9, None), 5), c[9:, 5] + 0.3), "rad per step"),
        (lambda c, p: c.__setitem__((3, 6), 1.2), "gripper"),
        (lambda c, p: c.__setitem__((4, 1), np.nan), "non-finite"),
    ],
)
def test_each_violation_is_named(home, edit, words):
    chunk = straight_chunk(home)
    edit(chunk, home)
    problems = check_chunk(chunk, home, SafetyLimits())
    assert problems and any(words in p for p in problems), problems


def test_joint_limits_and_reachability(kin, home):
    chunk = straight_chunk(home)
    joints = solve_joint_positions(kin, chunk, Q_HOME)
    bad = joints.copy()
    bad[2, 3] = 0.5  # joint 4 upper limit is -0.0698 rad
    assert any("joint limits" in p for p in check_chunk(chunk, home, SafetyLimits(), bad))
    far = joints.copy()
    far[6:] = Q_HOME  # joints that do not reach the commanded poses
    assert any("not reachable" in p for p in check_chunk(chunk, home, SafetyLimits(), far, kin))


def test_wrapping_roll_is_not_a_rotation(home):
    """Roll at +pi and -pi is the same orientation: no rotation violation from the wrap."""
    chunk = straight_chunk(home)
    chunk[::2, 3] = np.pi - 1e-3
    chunk[1::2, 3] = -np.pi + 1e-3
    assert check_chunk(chunk, home, SafetyLimits()) == []


def test_projection_is_feasible_and_leaves_feasible_knots_alone():
    limits = SafetyLimits()
    stride = 3
    start = torch.tensor([[0.5, 0.0, 0.3, 0.0]])
    g = torch.Generator().manual_seed(0)
    wild = start[:, None] + torch.randn(1, 5, 4, generator=g) * torch.tensor([0.5, 0.5, 0.5, 2.0])
    proj = project_knots(wild, start, limits, stride)
    prev = start[0, :3]
    for k in proj[0]:
        assert (k[:3] - prev).norm() <= stride * limits.max_translation_per_step_m + 1e-6
        assert torch.all(k[:3] >= torch.tensor(limits.workspace_min_m) - 1e-6)
        assert torch.all(k[:3] <= torch.tensor(limits.workspace_max_m) + 1e-6)
        assert 0.0 <= float(k[3]) <= 1.0
        prev = k[:3]
    gentle = start[:, None] + torch.linspace(0.02, 0.1, 5)[None, :, None] * torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert torch.allclose(project_knots(gentle, start, limits, stride), gentle)
