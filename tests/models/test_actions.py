"""Action normalisation with percentiles and roll unwrapping around +-pi."""

import math

import numpy as np
import torch

from vidplan_server.models.actions import ActionNormalizer, fit_action_stats


def _top_down_actions(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    a = np.zeros((n, 7))
    a[:, 0] = rng.uniform(0.3, 0.7, n)
    a[:, 1] = rng.uniform(-0.3, 0.3, n)
    a[:, 2] = rng.uniform(0.05, 0.5, n)
    roll = math.pi + rng.normal(0, 0.1, n)  # a top-down gripper: roll wraps between +pi and -pi
    a[:, 3] = (roll + math.pi) % (2 * math.pi) - math.pi
    a[:, 4] = rng.normal(0, 0.05, n)
    a[:, 5] = rng.uniform(-1, 1, n)
    a[:, 6] = rng.integers(0, 2, n)
    return a


def test_roll_near_pi_is_unwrapped_before_the_percentiles():
    a = _top_down_actions()
    stats = fit_action_stats(a)
    assert abs(abs(stats.angle_centre[0]) - math.pi) < 0.05
    # the unwrapped roll spans about +-0.23 rad (2.33 sigma), not the whole circle
    assert stats.high[3] - stats.low[3] < 0.6
    norm = ActionNormalizer(stats).normalize(torch.tensor(a, dtype=torch.float32))
    inside = ((norm >= -1.0001) & (norm <= 1.0001)).float().mean(0)
    assert torch.all(inside > 0.97)


def test_normalize_denormalize_round_trip():
    a = torch.tensor(_top_down_actions(200, seed=1), dtype=torch.float32)
    norm = ActionNormalizer(fit_action_stats(_top_down_actions()))
    back = norm.denormalize(norm.normalize(a))
    diff = back - a
    diff[:, 3:6] = (diff[:, 3:6] + math.pi) % (2 * math.pi) - math.pi  # same angle modulo 2 pi
    assert diff.abs().max() < 1e-4


def test_normalisation_is_differentiable():
    norm = ActionNormalizer(fit_action_stats(_top_down_actions()))
    a = torch.tensor(_top_down_actions(5, seed=2), dtype=torch.float32, requires_grad=True)
    norm.normalize(a).sum().backward()
    assert torch.all(a.grad > 0)
