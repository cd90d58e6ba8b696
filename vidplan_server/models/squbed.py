"""S-QUBED's black-box decomposition of a rollout's uncertainty (``../shared/seeds/003_61c1f495e92c5dd9.txt``).

The paper (Eq. 3) splits the entropy of the generated video given the prompt into an aleatoric part, the
entropy of the latent prompts ``z`` consistent with the prompt (Alg. 1, Eq. 8), and an epistemic part, the
expected entropy of the videos generated from one latent prompt (Alg. 2, Eq. 9-10); each entropy is that of a
von Mises-Fisher (VMF) distribution fitted to unit-norm embeddings (Eq. 6-7).

**What stands for the latent prompts.** Our world model is conditioned on history and an action chunk, not
on text, and what the planner hands it is a *commanded* chunk that the robot will not execute exactly: the
latent prompts are ``n`` executions of the chunk, its model-rate knots perturbed by the robot's actuation
noise (Gaussian, ``position_noise_m`` per axis and ``rotation_noise_rad`` per angle per knot; defaults 2 mm
and 0.01 rad, the scripted expert's action noise the data was recorded with; the gripper is kept). Like the
paper's refined prompts they are all consistent with the request, and their spread is irreducible by more
training. Each is rolled out ``m`` times with different flow-map noise (the sampler's randomness: the videos
given one latent prompt). The ``m`` noise draws are shared by the ``n`` prompts (common random numbers), so
the spread between prompts comes from the actions alone. All ``n * m`` rollouts run in one batched call.

**Embeddings.** Each predicted frame's latent ``(C, V*h, w)`` average-pooled to ``embed_grid`` (default 6 x 2
per channel: 48 numbers, 2 x 2 cells per view), flattened and put on the unit sphere. Decided instead of the
paper's per-task PCA: a projection fitted per request would change the space from request to request, and
entropies in different spaces do not compare; a fixed pooling keeps one space and a low dimension.
Per request, a rollout's embedding is its frames' embeddings concatenated and renormalised.

**Aleatoric embeddings.** Decided: a latent prompt ``z_i`` is embedded as the renormalised mean of its ``m``
videos' embeddings (the prompt seen through what the model makes of it). Embedding the perturbed actions
themselves would give the same entropy for every request (the actuation noise is a constant); what differs
between requests is how much that noise changes the outcome (a few mm matter at a grasp, not in free space).

**Entropies.** VMF parameters by the closed-form approximation of Banerjee et al. (2005): mean resultant
length R, ``mu = mean / R``, ``kappa = R (d - R^2) / (1 - R^2)``; entropy ``h = -ln C_d(kappa) - kappa A_d(kappa)``
with ``A_d = I_{d/2} / I_{d/2-1}`` (Eq. 8 / 10; Bessel functions from ``scipy.special.ive``). Decided: entropies
are reported relative to the VMF at ``kappa_max`` (the sharpest one we resolve), ``h(kappa) - h(kappa_max)``
with kappa clipped to ``kappa_max``, so identical samples give exactly 0, more spread gives more, and
total = aleatoric + epistemic still holds per frame and per request (in nats).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import special
from torch import nn

from vidplan_server.models.checkpoint import load_config, load_weights
from vidplan_server.models.world_model import WorldModel


@dataclass(frozen=True)
class SqubedConfig:
    latent_prompts: int = 4  # n: executions of the chunk under actuation noise
    videos: int = 4  # m: rollouts (flow-map noise draws) per latent prompt
    position_noise_m: float = 0.002  # per knot and axis (the scripted expert's action noise)
    rotation_noise_rad: float = 0.01
    embed_grid: tuple[int, int] = (6, 2)  # pooled latent cells per channel (rows over the stacked views, cols)
    kappa_max: float = 1e8
    flow_steps: int = 1

    def __post_init__(self) -> None:
        if self.latent_prompts < 2 or self.videos < 2:
            raise ValueError(
                f"latent_prompts and videos must be >= 2 (a VMF needs 2 samples), got "
                f"{self.latent_prompts} and {self.videos}"
            )
        if self.position_noise_m < 0 or self.rotation_noise_rad < 0:
            raise ValueError("position_noise_m and rotation_noise_rad must be >= 0")


# ------------------------------------------------------------------------------------------- VMF
def log_bessel_iv(v: float, x: np.ndarray) -> np.ndarray:
    """ln I_v(x) for x >= 0, stable for large x (exponentially scaled ``ive``) and for small x (the series'
    first term, where ``ive`` underflows)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore"):
        scaled = np.log(special.ive(v, x)) + x
    small = v * np.log(np.maximum(x, 1e-300) / 2.0) - special.gammaln(v + 1.0)
    return np.where(np.isfinite(scaled), scaled, small)


def vmf_entropy(kappa: np.ndarray, d: int) -> np.ndarray:
    """Differential entropy (nats) of a VMF on the unit sphere of R^d with concentration ``kappa`` (Eq. 7-8)."""
    k = np.maximum(np.asarray(kappa, dtype=np.float64), 1e-8)
    nu = d / 2.0 - 1.0
    log_c = nu * np.log(k) - (d / 2.0) * np.log(2.0 * np.pi) - log_bessel_iv(nu, k)
    a_d = np.exp(log_bessel_iv(nu + 1.0, k) - log_bessel_iv(nu, k))
    return -log_c - k * a_d


def vmf_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (..., k, d) -> (mu (..., d), kappa (...)) by Banerjee et al.'s approximation."""
    x = np.asarray(x, dtype=np.float64)
    d = x.shape[-1]
    mean = x.mean(-2)
    r = np.linalg.norm(mean, axis=-1)
    mu = mean / np.maximum(r, 1e-300)[..., None]
    r = np.clip(r, 0.0, 1.0 - 1e-15)
    kappa = r * (d - r**2) / (1.0 - r**2)
    return mu, kappa


def relative_entropy(x: np.ndarray, kappa_max: float) -> np.ndarray:
    """VMF entropy of samples (..., k, d) relative to the VMF at ``kappa_max``: >= 0, 0 for identical samples."""
    d = x.shape[-1]
    _, kappa = vmf_fit(x)
    kappa = np.minimum(kappa, kappa_max)
    return vmf_entropy(kappa, d) - vmf_entropy(np.asarray(kappa_max), d)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass
class Decomposition:
    """S-QUBED's figures for B requests (nats, relative to ``kappa_max``)."""

    aleatoric: np.ndarray  # (B, H) per frame: h(Z | request)
    epistemic: np.ndarray  # (B, H) per frame: E_z h(V | Z = z)
    request_aleatoric: np.ndarray  # (B,) on whole rollouts
    request_epistemic: np.ndarray  # (B,)

    @property
    def total(self) -> np.ndarray:
        """(B, H) per frame, Eq. 3."""
        return self.aleatoric + self.epistemic

    @property
    def request_total(self) -> np.ndarray:
        return self.request_aleatoric + self.request_epistemic


def decompose(embeddings: np.ndarray, kappa_max: float = 1e8) -> Decomposition:
    """Embeddings (B, n, m, H, D) of n latent prompts x m videos x H frames -> :class:`Decomposition`."""
    e = unit(np.asarray(embeddings, dtype=np.float64))
    B, n, m, H, D = e.shape
    per_frame = e.transpose(0, 3, 1, 2, 4)  # (B, H, n, m, D)
    epistemic = relative_entropy(per_frame, kappa_max).mean(-1)  # mean over z of h(V | z): (B, H)
    prompts = unit(per_frame.mean(-2))  # (B, H, n, D): each latent prompt through its videos
    aleatoric = relative_entropy(prompts, kappa_max)
    whole = unit(e.reshape(B, n, m, H * D))  # (B, n, m, H*D): whole rollouts
    req_epi = relative_entropy(whole, kappa_max).mean(-1)
    req_ale = relative_entropy(unit(whole.mean(-2)), kappa_max)
    return Decomposition(aleatoric, epistemic, req_ale, req_epi)


# ------------------------------------------------------------------------------------- rollouts
def embed_frames(latents: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Latents (..., C, V*h, w) -> frame embeddings (..., C * grid[0] * grid[1]), unit norm."""
    lead = latents.shape[:-3]
    pooled = F.adaptive_avg_pool2d(latents.reshape(-1, *latents.shape[-3:]).float(), grid)
    return F.normalize(pooled.flatten(1), dim=-1).reshape(*lead, -1)


def perturb_knots(knots: torch.Tensor, cfg: SqubedConfig, generator: torch.Generator) -> torch.Tensor:
    """Raw knots (B, H, 7) -> n executions (B, n, H, 7): position and orientation plus actuation noise."""
    B, H, A = knots.shape
    n = cfg.latent_prompts
    scale = torch.tensor([cfg.position_noise_m] * 3 + [cfg.rotation_noise_rad] * 3 + [0.0] * (A - 6))
    noise = torch.randn((B, n, H, A), generator=generator) * scale
    return knots[:, None].float() + noise.to(knots.device)


@torch.no_grad()
def squbed_rollouts(
    world: WorldModel, history: torch.Tensor, knots: torch.Tensor, cfg: SqubedConfig, generator: torch.Generator
) -> torch.Tensor:
    """All n x m rollouts of B requests in one batched flow-map call: history (B, T, C, h, w), raw knots
    (B, H, 7) -> frame embeddings (B, n, m, H, D)."""
    B, H = knots.shape[:2]
    n, m = cfg.latent_prompts, cfg.videos
    acts = perturb_knots(knots, cfg, generator)  # (B, n, H, 7)
    noise = torch.randn((B, 1, m, H, *history.shape[2:]), generator=generator).to(history.device)
    noise = noise.expand(B, n, m, *noise.shape[3:]).reshape(B * n * m, H, *history.shape[2:])
    acts = acts[:, :, None].expand(B, n, m, H, acts.shape[-1]).reshape(B * n * m, H, -1)
    hist = history[:, None].expand(B, n * m, *history.shape[1:]).reshape(B * n * m, *history.shape[1:])
    pred = world.rollout(hist, acts, "flow", cfg.flow_steps, noise=noise)  # (B*n*m, H, C, h, w)
    return embed_frames(pred, cfg.embed_grid).reshape(B, n, m, H, -1)


def estimate(
    world: WorldModel, history: torch.Tensor, knots: torch.Tensor, cfg: SqubedConfig, seed: int = 0
) -> Decomposition:
    """S-QUBED for B requests (history (B, T, C, h, w), raw knots (B, H, 7)); seeded, so repeatable."""
    g = torch.Generator().manual_seed(int(seed))
    emb = squbed_rollouts(world, history, knots, cfg, g)
    return decompose(emb.cpu().numpy(), cfg.kappa_max)


# ------------------------------------------------------------------------------ calibration map
@dataclass(frozen=True)
class SqubedModuleConfig:
    """The bundle's ``squbed`` module: the estimator's settings and the map from its per-frame total entropy to
    a probability, fitted on the calibration split (``vidplan train squbed``)."""

    squbed: SqubedConfig = field(default_factory=SqubedConfig)
    tau: float = 0.3  # frame event: mean |latent error| of the frame <= tau (the calibration split's median)


class SqubedCalibration(nn.Module):
    """P(frame mean |latent error| <= tau) = sigmoid(a + b * total entropy) (Platt scaling).

    Decided: S-QUBED's entropies are not probabilities, and ECE, Brier and the planner's weight need one. Two
    numbers fitted by logistic regression on the calibration split keep the ranking (b < 0 when more entropy
    means more error) and make ECE a statement about how well that ranking turns into frequencies.
    """

    def __init__(self, config: SqubedModuleConfig = SqubedModuleConfig()) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("a", torch.zeros(()))
        self.register_buffer("b", torch.zeros(()))

    def forward(self, total: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Total entropy (any shape) -> P(frame error <= tau), same shape."""
        t = torch.as_tensor(np.asarray(total) if not torch.is_tensor(total) else total, dtype=torch.float32)
        return torch.sigmoid(self.a + self.b * t)

    def fit(self, total: np.ndarray, ok: np.ndarray, steps: int = 200) -> SqubedCalibration:
        """Logistic regression of 0/1 outcomes ``ok`` (N,) on ``total`` (N,) by L-BFGS (inputs standardised)."""
        x = torch.as_tensor(np.asarray(total, dtype=np.float64)).float()
        y = torch.as_tensor(np.asarray(ok, dtype=np.float64)).float()
        mean, std = x.mean(), x.std().clamp_min(1e-6)
        w = torch.zeros(2, requires_grad=True)
        opt = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(w[0] + w[1] * (x - mean) / std, y)
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            self.b.copy_(w[1] / std)
            self.a.copy_(w[0] - w[1] * mean / std)
        return self


def load_squbed(ckpt: str | Path) -> SqubedCalibration:
    """The bundle's ``squbed`` module (settings and calibration map)."""
    return load_weights(ckpt, "squbed", SqubedCalibration(load_config(ckpt, "squbed", SqubedModuleConfig))).eval()
