"""C3's threshold-conditioned confidence probe (``../shared/seeds/000_d6aee13b255d1d00.txt``) on our flow map.

For every latent element of a rollout the probe gives q = P(|prediction - truth| <= eps), trained with a
proper scoring rule (BCE or Brier, selectable) against the 0/1 outcome, so that minimising the loss makes q
the true frequency (calibration). Two variants, as in the paper:

- **FSC** (fixed scale): one threshold ``eps`` chosen before training; one logit per element.
- **CS-BC** (continuous scale): conditioned on eps, drawn uniformly from ``[eps_min, eps_max]`` per element
  during training, so any eps in that range works at inference.

Inputs (the paper's "penultimate DiT features plus action and time embeddings"): the backbone's features just
before its output convolution (``net.conv_out``'s input, ``(B*H, c0, h/p, w/p)`` at the patchified resolution)
and the per-frame conditioning embedding the residual blocks read (``net.mid1``'s second argument,
``(B*H, E)``: noise level + action + frame position + the flow map's end-time embedding), both taken by
forward hooks (:class:`FeatureTap`) during the rollout's *last* network evaluation, so the probe needs no
change to the world model and costs no extra network evaluation. ``torch.no_grad`` around the rollout (and
``detach`` in the tap) keeps every gradient out of the world model.

Accuracy is measured in the model's own prediction space as the paper asks, in latents: the error of the
k-step sample ``|x1_hat - x1|`` per element, the quantity the 30-bin head (``models/heads.py``) predicts too,
so the two compare one-to-one. (C3 measures it on the velocity; for our 1-step flow map the latent error is
the velocity error times ``1 - t_min``, the same event up to a rescaled eps.)

Decided, against a plain "eps as one more input" network: CS-BC's logit is **monotone in eps by
construction**, ``logit(eps) = a + sum_k softplus(b_k) * sigmoid((ln eps - c_k) / s)`` with ``a`` and the
``b_k`` per element from the features and fixed log-spaced centres ``c_k`` over the training range. q is then
a CDF in eps (P(err <= 0.25) can never exceed P(err <= 0.5)), which an unconstrained network does not
guarantee between the thresholds it happened to see, and one probe call gives q at any number of thresholds.

Shapes: predicted latents ``(B, H, C, h, w)``; probe output logits ``(B, H, C, h, w)`` (FSC) or
``(B, H, C, h, w)`` at each requested eps (CS-BC, eps broadcastable to that shape or a float).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vidplan_server.models.checkpoint import load_config, load_weights
from vidplan_server.models.flow_map import FlowMap

METHODS = ("fsc", "cs")
LOSSES = ("bce", "brier")


@dataclass(frozen=True)
class C3ProbeConfig:
    method: str = "cs"  # "fsc": one threshold; "cs": CS-BC, conditioned on eps in [eps_min, eps_max]
    loss: str = "bce"  # proper scoring rule: "bce" or "brier"
    eps: float = 0.5  # FSC's threshold on |latent error|
    eps_min: float = 0.05  # CS-BC's training range of eps
    eps_max: float = 1.5
    basis: int = 8  # CS-BC: monotone sigmoid steps in ln eps
    hidden: int = 64
    feature_channels: int = 64  # c0 of the backbone (its last level's channels)
    embed_dim: int = 128  # E of the backbone's per-frame embedding
    latent_channels: int = 4
    patch_size: int = 2  # the backbone's space-to-depth factor (features are at h/p x w/p)
    frames: int = 5  # H
    flow_steps: int = 1  # k of the rollouts it was trained on (the planner's k)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if not 0 < self.eps_min < self.eps_max:
            raise ValueError(f"need 0 < eps_min < eps_max, got {self.eps_min}, {self.eps_max}")
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if self.basis < 1:
            raise ValueError(f"basis must be >= 1, got {self.basis}")

    @property
    def module_name(self) -> str:
        """The bundle module this probe is stored as: ``c3_fsc`` or ``c3_cs``."""
        return f"c3_{self.method}"


class FeatureTap:
    """Forward hooks on a backbone that keep its penultimate features and per-frame embedding of the last call.

    ``with FeatureTap(flow_map) as tap: pred = flow_map.sample(...)`` then ``tap.features`` ``(B*H, c0, h/p,
    w/p)`` and ``tap.embedding`` ``(B*H, E)``, detached. Works for any backbone with ``conv_out`` (the output
    convolution) and ``mid1`` (a block called as ``mid1(x, emb)``), which is :class:`~vidplan_server.models.
    video_net.VideoNet`'s layout; anything else fails with a message naming the missing module.
    """

    def __init__(self, flow_map: FlowMap, keep_grad: bool = False) -> None:
        net = flow_map.denoiser.net
        for name in ("conv_out", "mid1"):
            if not hasattr(net, name):
                raise AttributeError(
                    f"C3 probe: the backbone {type(net).__name__} has no '{name}' module to take features from"
                )
        self.net = net
        self.keep_grad = keep_grad
        self.features: torch.Tensor | None = None
        self.embedding: torch.Tensor | None = None
        self._handles: list = []

    def _keep(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.keep_grad else x.detach()

    def __enter__(self) -> FeatureTap:
        def on_out(_module, args):
            self.features = self._keep(args[0])

        def on_mid(_module, args):
            self.embedding = self._keep(args[1])

        self._handles = [
            self.net.conv_out.register_forward_pre_hook(on_out),
            self.net.mid1.register_forward_pre_hook(on_mid),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def rollout_with_features(
    flow_map: FlowMap, history: torch.Tensor, actions: torch.Tensor, steps: int, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """k-step flow-map sample (B, H, C, h, w) with normalised actions, and the last evaluation's features
    ``(B*H, c0, h/p, w/p)`` and embedding ``(B*H, E)``; no gradient."""
    with torch.no_grad(), FeatureTap(flow_map) as tap:
        pred = flow_map.sample(history, actions, steps=steps, noise=noise)
    return pred, tap.features, tap.embedding


class C3Probe(nn.Module):
    """Penultimate features + embedding -> per-element logit of P(|err| <= eps) (module docstring)."""

    def __init__(self, config: C3ProbeConfig = C3ProbeConfig()) -> None:
        super().__init__()
        self.config = c = config
        p2 = c.patch_size**2
        self.heads = 1 if c.method == "fsc" else 1 + c.basis  # a, then b_1..b_K
        self.conv_in = nn.Conv2d(c.feature_channels, c.hidden, 1)
        self.film = nn.Linear(c.embed_dim, 2 * c.hidden)
        self.conv_mid = nn.Conv2d(c.hidden, c.hidden, 3, padding=1)
        self.conv_out = nn.Conv2d(c.hidden, self.heads * c.latent_channels * p2, 1)
        centres = torch.linspace(math.log(c.eps_min), math.log(c.eps_max), c.basis)
        self.register_buffer("centres", centres, persistent=False)
        self.scale = float(centres[1] - centres[0]) if c.basis > 1 else 1.0

    def coefficients(self, features: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """(B*H, c0, h/p, w/p), (B*H, E) -> (B, H, C, h, w, heads): ``a`` then the ``b_k`` per element."""
        c = self.config
        z = self.conv_in(features.float())
        scale, shift = self.film(embedding.float())[:, :, None, None].chunk(2, dim=1)
        z = self.conv_mid(F.silu(z * (1 + scale) + shift))
        out = F.pixel_shuffle(self.conv_out(F.silu(z)), c.patch_size)  # (B*H, heads*C, h, w)
        BH, _, h, w = out.shape
        out = out.reshape(BH // c.frames, c.frames, self.heads, c.latent_channels, h, w)
        return out.permute(0, 1, 3, 4, 5, 2)

    def logits_at(self, coeff: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
        """Coefficients (..., heads) -> logit of P(|err| <= eps) (...); eps a float or broadcastable tensor.
        FSC ignores ``eps`` (its threshold is the config's)."""
        a = coeff[..., 0]
        if self.config.method == "fsc":
            return a
        eps = torch.as_tensor(eps, dtype=coeff.dtype, device=coeff.device)
        phi = torch.sigmoid((eps.clamp_min(1e-6).log()[..., None] - self.centres) / self.scale)
        return a + (F.softplus(coeff[..., 1:]) * phi).sum(-1)

    def forward(
        self, features: torch.Tensor, embedding: torch.Tensor, eps: float | torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (B, H, C, h, w) of P(|err| <= eps); ``eps`` None means the config's ``eps``."""
        return self.logits_at(self.coefficients(features, embedding), self.config.eps if eps is None else eps)

    def probabilities(
        self, features: torch.Tensor, embedding: torch.Tensor, thresholds: tuple[float, ...]
    ) -> dict[float, torch.Tensor]:
        """q at each threshold, (B, H, C, h, w) each, from one pass of the network. FSC answers only its eps."""
        coeff = self.coefficients(features, embedding)
        if self.config.method == "fsc":
            return {self.config.eps: torch.sigmoid(coeff[..., 0])}
        return {e: torch.sigmoid(self.logits_at(coeff, e)) for e in thresholds}


def scoring_loss(logits: torch.Tensor, outcome: torch.Tensor, rule: str) -> torch.Tensor:
    """Unreduced proper scoring rule of predicted logits against 0/1 outcomes (same shape): "bce" (log loss)
    or "brier" ((q - y)^2). Both are minimised in expectation by q = P(y = 1)."""
    y = outcome.float()
    if rule == "bce":
        return F.binary_cross_entropy_with_logits(logits.float(), y, reduction="none")
    if rule == "brier":
        return (torch.sigmoid(logits.float()) - y) ** 2
    raise ValueError(f"rule must be one of {LOSSES}, got {rule!r}")


def probe_config_for(flow_map: FlowMap, **overrides) -> C3ProbeConfig:
    """A probe config matching the flow map's backbone (channels, embedding, patch size, frames)."""
    net = flow_map.denoiser.net.config
    return C3ProbeConfig(
        feature_channels=net.channels[0],
        embed_dim=net.embed_dim,
        latent_channels=net.latent_channels,
        patch_size=net.patch_size,
        frames=net.horizon,
        **overrides,
    )


def load_c3_probe(ckpt: str | Path, method: str) -> C3Probe:
    """The bundle's ``c3_<method>`` module (``fsc`` or ``cs``), in eval mode."""
    name = f"c3_{method}"
    return load_weights(ckpt, name, C3Probe(load_config(ckpt, name, C3ProbeConfig))).eval()
