"""Histogram distributions: bin edges, the open last bin, entropy, expectation, CDF."""

import math

import pytest
import torch

from vidplan_server.models.bins import ERROR_BINS, VALUE_BINS, Bins


def _logits(probs):
    return torch.tensor(probs, dtype=torch.float64).clamp(min=1e-30).log()


def test_error_bins_match_the_design():
    edges = ERROR_BINS.edges()
    assert ERROR_BINS.count == 30 and len(edges) == 31
    assert edges[0] == 0 and edges[-1] == 10
    assert ERROR_BINS.width == pytest.approx(1 / 3)
    assert VALUE_BINS.count == 20 and VALUE_BINS.edges()[-1] == 1


def test_bin_index_and_the_open_last_bin():
    values = torch.tensor([0.0, 0.2, 0.34, 9.9, 10.0, 25.0, 1e6, -0.5])
    assert ERROR_BINS.index(values).tolist() == [0, 0, 1, 29, 29, 29, 29, 0]
    # a return of exactly 1.0 (success on the last step) lands in the last value bin
    assert VALUE_BINS.index(torch.tensor([0.0, 0.049, 0.05, 1.0])).tolist() == [0, 0, 1, 19]


def test_entropy_and_expectation_against_hand_computed_values():
    bins = Bins(0.0, 4.0, 4)  # centres 0.5, 1.5, 2.5, 3.5
    one_hot = _logits([0, 0, 1, 0])
    two = _logits([0.5, 0.5, 0, 0])
    uniform = torch.zeros(4)
    skewed = _logits([0.1, 0.2, 0.3, 0.4])
    assert bins.entropy(one_hot).item() == pytest.approx(0.0, abs=1e-6)
    assert bins.entropy(two).item() == pytest.approx(math.log(2), abs=1e-6)
    assert bins.normalized_entropy(uniform).item() == pytest.approx(1.0)
    expected_h = -sum(p * math.log(p) for p in (0.1, 0.2, 0.3, 0.4))
    assert bins.entropy(skewed).item() == pytest.approx(expected_h, abs=1e-6)
    assert bins.expected(one_hot).item() == pytest.approx(2.5)
    assert bins.expected(two).item() == pytest.approx(1.0)
    assert bins.expected(skewed).item() == pytest.approx(0.1 * 0.5 + 0.2 * 1.5 + 0.3 * 2.5 + 0.4 * 3.5)


def test_cdf_spreads_mass_uniformly_inside_bins():
    bins = Bins(0.0, 4.0, 4)
    logits = _logits([0.1, 0.2, 0.3, 0.4])
    assert bins.cdf(logits, 0.0).item() == pytest.approx(0.0)
    assert bins.cdf(logits, 1.0).item() == pytest.approx(0.1)
    assert bins.cdf(logits, 1.5).item() == pytest.approx(0.1 + 0.5 * 0.2)
    assert bins.cdf(logits, 3.0).item() == pytest.approx(0.6)
    assert bins.cdf(logits, 4.0).item() == pytest.approx(1.0)
    assert bins.cdf(logits, 99.0).item() == pytest.approx(1.0)
    assert bins.cdf(logits, -1.0).item() == pytest.approx(0.0)


def test_functions_work_on_batched_logits_and_keep_gradients():
    logits = torch.randn(2, 3, 30, requires_grad=True)
    e = ERROR_BINS.expected(logits)
    assert e.shape == (2, 3) and ERROR_BINS.normalized_entropy(logits).shape == (2, 3)
    e.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_invalid_bins_are_rejected():
    with pytest.raises(ValueError):
        Bins(1.0, 1.0, 10)
    with pytest.raises(ValueError):
        Bins(0.0, 1.0, 1)
