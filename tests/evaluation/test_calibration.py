"""ECE / MCE, correlations and AUROC on constructed data with known answers."""

import numpy as np
import pytest

from vidplan_server.evaluation.calibration import CalibrationAccumulator, auroc, calibration_errors, correlation


def test_perfectly_calibrated_predictions_have_zero_ece_and_mce():
    # 400 predictions at 0.25 of which exactly 100 happen, 400 at 0.75 of which exactly 300 happen
    conf = np.r_[np.full(400, 0.25), np.full(400, 0.75)]
    correct = np.r_[np.arange(400) < 100, np.arange(400) < 300]
    ece, mce, table = calibration_errors(conf, correct)
    assert ece == pytest.approx(0.0, abs=1e-12) and mce == pytest.approx(0.0, abs=1e-12)
    assert table["count"][2] == 400 and table["count"][7] == 400


def test_overconfident_predictions_have_the_known_ece_and_mce():
    # always 90 % sure, right 60 % of the time: ECE = MCE = 0.3
    conf = np.full(1000, 0.9)
    correct = np.arange(1000) < 600
    ece, mce, _ = calibration_errors(conf, correct)
    assert ece == pytest.approx(0.3) and mce == pytest.approx(0.3)
    # half calibrated (0.25 -> 25 %), half off by 0.4 (0.85 -> 45 %): ECE 0.2, MCE 0.4
    conf = np.r_[np.full(400, 0.25), np.full(400, 0.85)]
    correct = np.r_[np.arange(400) < 100, np.arange(400) < 180]
    ece, mce, _ = calibration_errors(conf, correct)
    assert ece == pytest.approx(0.2) and mce == pytest.approx(0.4)


def test_accumulating_in_batches_equals_one_call():
    rng = np.random.default_rng(0)
    conf = rng.random(1000)
    correct = rng.random(1000) < conf**2
    acc = CalibrationAccumulator()
    for part in np.array_split(np.arange(1000), 7):
        acc.add(conf[part], correct[part])
    assert acc.result()[:2] == pytest.approx(calibration_errors(conf, correct)[:2])
    with pytest.raises(ValueError):
        CalibrationAccumulator().result()


def test_kendall_tau_sign_follows_the_relation():
    rng = np.random.default_rng(1)
    u = rng.random(200)
    up = correlation(u, u + 0.1 * rng.random(200))
    down = correlation(u, -u + 0.1 * rng.random(200))
    assert up["kendall_tau"] > 0.7 and up["kendall_p"] < 1e-6 and up["pearson_r"] > 0.9
    assert down["kendall_tau"] < -0.7 and down["kendall_p"] < 1e-6
    noise = correlation(u, rng.random(200))
    assert abs(noise["kendall_tau"]) < 0.15


def test_auroc_of_separable_and_indistinguishable_scores():
    assert auroc(np.array([0.8, 0.9]), np.array([0.1, 0.2, 0.3])) == pytest.approx(1.0)
    assert auroc(np.array([0.1]), np.array([0.9])) == pytest.approx(0.0)
    assert auroc(np.full(5, 0.5), np.full(5, 0.5)) == pytest.approx(0.5)
    assert np.isnan(auroc(np.array([]), np.array([0.2])))
