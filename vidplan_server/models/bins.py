"""Histogram distributions over a scalar: the UQ head's latent error and the value head's return.

A head outputs logits over ``count`` equal-width bins of ``[low, high]``. With ``open_last`` the last
bin also holds every value above ``high`` (DESIGN: the latent error bins are ``[0, 10]`` with the last
bin open-ended); values below ``low`` fall in the first bin.

Decisions (the papers only say "bins"):

- Inside a bin the probability mass is spread uniformly. So ``cdf(eps)`` interpolates linearly inside
  the bin holding ``eps``, and the expected value uses bin centres. The open last bin is represented by
  its centre as if it were closed (``high - width / 2``): the expectation is then a lower bound when
  mass sits above ``high``, which for latent errors (normalised latents, |err| rarely above 3) never
  matters in practice.
- Entropy is in nats over the bins; ``normalized_entropy`` divides by ``ln(count)`` so the uncertainty
  lies in ``[0, 1]`` (the paper's App. A.6 colour map takes uncertainty "bounded between zero and one").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Bins:
    low: float
    high: float
    count: int
    open_last: bool = True

    def __post_init__(self) -> None:
        if self.count < 2 or not self.high > self.low:
            raise ValueError(f"bins need count >= 2 and high > low, got {self}")

    @property
    def width(self) -> float:
        return (self.high - self.low) / self.count

    def edges(self, device=None) -> torch.Tensor:
        """(count + 1,) bin edges from ``low`` to ``high``."""
        return torch.linspace(self.low, self.high, self.count + 1, device=device)

    def centres(self, device=None) -> torch.Tensor:
        e = self.edges(device)
        return 0.5 * (e[1:] + e[:-1])

    def index(self, values: torch.Tensor) -> torch.Tensor:
        """Bin index (long, same shape) of every value; out-of-range values go to the end bins."""
        i = torch.floor((values - self.low) / self.width).long()
        return i.clamp(0, self.count - 1)

    # ------------------------------------------------------------------ from logits (..., count)
    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(-1)

    def entropy(self, logits: torch.Tensor) -> torch.Tensor:
        """Entropy in nats of every distribution; shape ``logits.shape[:-1]``."""
        logp = logits.float().log_softmax(-1)
        return -(logp.exp() * logp).sum(-1)

    def normalized_entropy(self, logits: torch.Tensor) -> torch.Tensor:
        """Entropy / ln(count), in [0, 1]: 0 = all mass in one bin, 1 = uniform."""
        return self.entropy(logits) / math.log(self.count)

    def expected(self, logits: torch.Tensor) -> torch.Tensor:
        """Mean of the distribution (bin centres), shape ``logits.shape[:-1]``; differentiable."""
        return (self.probs(logits) * self.centres(logits.device)).sum(-1)

    def cdf(self, logits: torch.Tensor, value: float) -> torch.Tensor:
        """P(X <= value), mass uniform inside each bin; shape ``logits.shape[:-1]``.

        Evaluated on ``[low, high]`` (``value`` is clamped there): the open last bin's mass counts as
        lying below ``high``, so ``cdf(high) == 1``. Thresholds of interest sit far below ``high``.
        """
        return self._cdf(self.probs(logits), value)

    def _cdf(self, p: torch.Tensor, value: float) -> torch.Tensor:
        pos = (min(max(value, self.low), self.high) - self.low) / self.width
        full = min(int(math.floor(pos)), self.count)
        below = p[..., :full].sum(-1)
        return below + (pos - full) * p[..., full] if full < self.count else below

    def summaries(self, logits: torch.Tensor, value: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(normalized_entropy, expected, cdf(value)) from one softmax: the three of them separately cost
        three softmaxes over what is, for a planner batch, millions of distributions."""
        logp = logits.float().log_softmax(-1)
        p = logp.exp()
        ent = -(p * logp).sum(-1) / math.log(self.count)
        return ent, p @ self.centres(logits.device), self._cdf(p, value)

    def confidence(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(probability of the most likely bin, its index), each of shape ``logits.shape[:-1]``."""
        conf, idx = self.probs(logits).max(-1)
        return conf, idx


ERROR_BINS = Bins(0.0, 10.0, 30, open_last=True)  # DESIGN "Uncertainty": absolute latent error
VALUE_BINS = Bins(0.0, 1.0, 20, open_last=False)  # DESIGN "Reward": discounted return in [0, 1]
