"""EDM (Karras et al. 2022) action-conditioned video denoiser, its loss (paper Eq. 2) and Heun sampler.

The denoiser D(x; sigma) predicts the clean future latents x1 from x = x1 + sigma * x0 (x0 ~ N(0, I))
with the EDM preconditioning

    c_skip = sd^2 / (sigma^2 + sd^2)      c_out  = sigma * sd / sqrt(sigma^2 + sd^2)
    c_in   = 1 / sqrt(sigma^2 + sd^2)     c_noise = ln(sigma) / 4
    D(x; sigma) = c_skip * x + c_out * F(c_in * x; c_noise),     eps_hat = (x - D) / sigma

where sd = sigma_data is measured on the training latents and stored in the config. Written out,
eps_hat = sigma x / (sigma^2 + sd^2) - sd F / sqrt(sigma^2 + sd^2): finite as sigma -> 0, which the
flow map (Algorithm 1) relies on. Training: ln(sigma) ~ N(p_mean, p_std^2), loss weight
lambda(sigma) = (sigma^2 + sd^2) / (sigma * sd)^2, i.e. Eq. 2 with w = lambda * c_out^2.

``residual`` (decided here, not in the paper): the preconditioning is applied around the current frame a
(the last history latent, broadcast over the H future frames) instead of around 0,

    D(x; sigma) = a + c_skip * (x - a) + c_out * F(c_in * (x - a); c_noise),     eps_hat = (x - D) / sigma,

so the network models the change from the current frame and sd is the std of that change. Samplers, the
flow map and the losses still work in absolute latents (only D knows about a). Why: most of a frame is
static, and a small model trained for minutes on a CPU spends its capacity redrawing the scene -- the bundled
absolute model's Heun samples were further from the truth (MSE 0.31) than copying the current frame (0.185),
and its rollouts did not depend on the actions. With the anchor an untrained network (zero output layer)
already predicts "nothing moves", and training is spent on what moves: the arm, i.e. the actions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vidplan_server.models.video_net import VideoNet


@dataclass(frozen=True)
class EDMConfig:
    sigma_data: float = 1.0
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    residual: bool = False  # precondition around the current frame (see the module docstring)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


class EDMDenoiser(nn.Module):
    """D(x; sigma, history, actions) with EDM preconditioning around a backbone ``net``."""

    def __init__(self, net: VideoNet, config: EDMConfig = EDMConfig()) -> None:
        super().__init__()
        self.net = net
        self.config = config

    def precondition(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        sd = self.config.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1.0 / (sigma**2 + sd**2).sqrt()
        c_noise = sigma.clamp_min(1e-20).log() / 4.0
        return c_skip, c_out, c_in, c_noise

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        history: torch.Tensor,
        actions: torch.Tensor,
        cond: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Noisy future latents x (B, H, C, h, w) at noise level sigma (B,), history (B, T, C, h, w),
        normalised actions (B, H, 7) -> (x1_hat, eps_hat), both (B, H, C, h, w)."""
        sigma = sigma.to(x.dtype).reshape(-1).expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = self.precondition(sigma)
        anchor = history[:, -1:].to(x.dtype) if self.config.residual else None
        y = x if anchor is None else x - anchor  # no zero tensor on the absolute path
        out = self.net(_bcast(c_in, x) * y, history, actions, c_noise, cond)
        out = out.to(x.dtype)
        x1_hat = _bcast(c_skip, x) * y + _bcast(c_out, x) * out
        if anchor is not None:
            x1_hat = x1_hat + anchor
        sd = self.config.sigma_data
        eps_hat = _bcast(sigma / (sigma**2 + sd**2), x) * y - _bcast(sd / (sigma**2 + sd**2).sqrt(), x) * out
        return x1_hat, eps_hat


def edm_loss(
    denoiser: EDMDenoiser,
    x1: torch.Tensor,
    history: torch.Tensor,
    actions: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Eq. 2: E[lambda(sigma) ||D(x1 + sigma x0; sigma) - x1||^2], ln sigma ~ N(p_mean, p_std^2)."""
    cfg = denoiser.config
    B = x1.shape[0]
    ln_sigma = torch.randn(B, generator=generator).to(x1.device) * cfg.p_std + cfg.p_mean
    sigma = ln_sigma.exp()
    noise = torch.randn(x1.shape, generator=generator).to(x1.device)
    x1_hat, _ = denoiser(x1 + _bcast(sigma, x1) * noise, sigma, history, actions)
    weight = (sigma**2 + cfg.sigma_data**2) / (sigma * cfg.sigma_data) ** 2
    return (_bcast(weight, x1) * (x1_hat.float() - x1) ** 2).mean()


def heun_sigmas(steps: int, config: EDMConfig) -> torch.Tensor:
    """EDM's sigma schedule: ``steps`` levels from sigma_max to sigma_min (rho spacing), then 0."""
    i = torch.arange(steps, dtype=torch.float64)
    inv = 1.0 / config.rho
    span = config.sigma_min**inv - config.sigma_max**inv
    sig = (config.sigma_max**inv + (i / max(steps - 1, 1)) * span) ** config.rho
    return torch.cat([sig, torch.zeros(1, dtype=torch.float64)]).float()


def heun_sample(
    denoiser: EDMDenoiser,
    history: torch.Tensor,
    actions: torch.Tensor,
    steps: int = 18,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """EDM Algorithm 1 (deterministic Heun, 2nd order): future latents (B, H, C, h, w).

    Uses 2 * steps - 1 network evaluations (the last step to sigma = 0 is an Euler step). ``noise``
    (B, H, C, h, w) is the standard-normal start; drawn from ``generator`` when not given.
    """
    net = denoiser.net.config
    B = history.shape[0]
    shape = (B, net.horizon, *history.shape[2:])
    if noise is None:
        noise = torch.randn(shape, generator=generator).to(history.device)
    sigmas = heun_sigmas(steps, denoiser.config).to(history.device)
    x = noise * sigmas[0]
    for i in range(steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        x1_hat, _ = denoiser(x, s.expand(B), history, actions)
        d = (x - x1_hat) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:
            x1_next, _ = denoiser(x_next, s_next.expand(B), history, actions)
            d_next = (x_next - x1_next) / s_next
            x_next = x + (s_next - s) * 0.5 * (d + d_next)
        x = x_next
    return x
