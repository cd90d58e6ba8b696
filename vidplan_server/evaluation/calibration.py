"""Calibration metrics (C3 / S-QUBED): ECE and MCE with equal-width bins, reliability diagrams, rank and
linear correlation between uncertainty and error (scipy.stats).

ECE = sum_b (n_b / N) |acc_b - conf_b|, MCE = max_b |acc_b - conf_b| over non-empty bins b, where conf_b
is the mean predicted probability of the event in bin b and acc_b how often the event happened.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy import stats


class CalibrationAccumulator:
    """Equal-width-bin statistics of (predicted probability, 0/1 outcome) pairs, added in batches."""

    def __init__(self, n_bins: int = 10) -> None:
        self.n_bins = n_bins
        self.count = torch.zeros(n_bins, dtype=torch.float64)
        self.sum_conf = torch.zeros(n_bins, dtype=torch.float64)
        self.sum_acc = torch.zeros(n_bins, dtype=torch.float64)

    def add(self, conf: torch.Tensor | np.ndarray, correct: torch.Tensor | np.ndarray) -> None:
        conf = torch.as_tensor(conf).detach().double().flatten().cpu()
        correct = torch.as_tensor(correct).detach().double().flatten().cpu()
        if conf.numel() != correct.numel():
            raise ValueError(f"need as many outcomes as predictions, got {conf.numel()} and {correct.numel()}")
        b = torch.clamp((conf * self.n_bins).long(), 0, self.n_bins - 1)
        self.count += torch.bincount(b, minlength=self.n_bins).double()
        self.sum_conf += torch.bincount(b, conf, minlength=self.n_bins)
        self.sum_acc += torch.bincount(b, correct, minlength=self.n_bins)

    def result(self) -> tuple[float, float, dict]:
        """(ECE, MCE, per-bin table with ``count``, ``confidence`` and ``accuracy``; NaN for empty bins)."""
        if self.count.sum() == 0:
            raise ValueError("no predictions were added")
        nonempty = self.count > 0
        mean_conf = torch.where(nonempty, self.sum_conf / self.count.clamp(min=1), torch.nan)
        mean_acc = torch.where(nonempty, self.sum_acc / self.count.clamp(min=1), torch.nan)
        gap = (mean_acc - mean_conf).abs()
        ece = float((self.count[nonempty] / self.count.sum() * gap[nonempty]).sum())
        mce = float(gap[nonempty].max())
        table = {"count": self.count.long().tolist(), "confidence": mean_conf.tolist(), "accuracy": mean_acc.tolist()}
        return ece, mce, table


def calibration_errors(
    conf: torch.Tensor | np.ndarray, correct: torch.Tensor | np.ndarray, n_bins: int = 10
) -> tuple[float, float, dict]:
    """(ECE, MCE, per-bin table) of predicted probabilities ``conf`` (N,) for 0/1 outcomes ``correct`` (N,)."""
    acc = CalibrationAccumulator(n_bins)
    acc.add(conf, correct)
    return acc.result()


def correlation(uncertainty: np.ndarray, error: np.ndarray) -> dict[str, float]:
    """Kendall tau with its p-value and Pearson r between paired per-sample values."""
    u, e = np.asarray(uncertainty, float).ravel(), np.asarray(error, float).ravel()
    tau = stats.kendalltau(u, e)
    r = stats.pearsonr(u, e)
    return {
        "kendall_tau": float(tau.statistic),
        "kendall_p": float(tau.pvalue),
        "pearson_r": float(r.statistic),
        "pearson_p": float(r.pvalue),
    }


def auroc(scores_pos: np.ndarray, scores_neg: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative), ties counting half
    (the Mann-Whitney U statistic divided by n_pos * n_neg)."""
    pos, neg = np.asarray(scores_pos, float), np.asarray(scores_neg, float)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    u = stats.mannwhitneyu(pos, neg, alternative="two-sided").statistic
    return float(u / (len(pos) * len(neg)))


def reliability_diagram(tables: dict[str, dict], path: str | Path, title: str) -> Path:
    """Draw one reliability curve per entry of ``tables`` (name -> ``calibration_errors`` table) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    for name, table in tables.items():
        conf = np.array(table["confidence"], float)
        acc = np.array(table["accuracy"], float)
        ok = ~np.isnan(conf)
        ax.plot(conf[ok], acc[ok], "o-", ms=3, label=name)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
