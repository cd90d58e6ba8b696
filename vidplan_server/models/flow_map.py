"""Flow map distilled from the EDM video denoiser: DIFF2FLOW (Algorithm 1) and PSD losses (Algorithm 2).

Flow-time convention (the one place it is defined): **t = 0 is noise, t = 1 is data**,

    x_t = t * x1 + (1 - t) * x0,      x0 ~ N(0, I),      velocity b_t = d x_t / dt = x1 - x0,

as in Section 3.2 of the paper (its Algorithm 2 writes the opposite direction; we follow the text and
Algorithm 1, whose sigma = (1 - s) / s only makes sense with data at 1). The flow map is
X_{s,t}(x) = x + (t - s) * v_{s,t}(x), mapping x_s to x_t for s <= t.

DIFF2FLOW: x_s is moved to EDM space, x_edm = x_s / s = x1 + sigma x0 with sigma = (1 - s) / s, the
denoiser gives (x1_hat, eps_hat) and v_{s,t} = x1_hat - eps_hat. The end time t enters through an
extra embedding of (t - s), added to the backbone's per-frame conditioning, whose last layer starts at
zero: before fine-tuning v_{s,t} = v_{s,s} = the diffusion model's velocity exactly, for every t.

Time domain: start times are clamped to [t_min, t_max] with t_min = 1 / (1 + sigma_max) and
t_max = 1 / (1 + sigma_min) of the EDM config, so sigma stays in the range the denoiser was trained on.
Sampling starts at t_min from x = (1 - t_min) * noise, i.e. x_edm = sigma_max * noise -- EDM's own
start -- and ends at t = 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vidplan_server.models.edm import EDMDenoiser
from vidplan_server.models.video_net import FourierEmbedding


@dataclass(frozen=True)
class FlowMapConfig:
    end_time_features: int = 16


class FlowMap(nn.Module):
    """v_{s,t}(x_s; history, actions) from a (copied) EDM denoiser plus an end-time embedding."""

    def __init__(self, denoiser: EDMDenoiser, config: FlowMapConfig = FlowMapConfig()) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.config = config
        E = denoiser.net.config.embed_dim
        self.end_time_embed = nn.Sequential(
            FourierEmbedding(config.end_time_features, min_freq=0.1, max_freq=4.0),
            nn.Linear(2 * config.end_time_features, E),
            nn.SiLU(),
            nn.Linear(E, E),
        )
        nn.init.zeros_(self.end_time_embed[-1].weight)
        nn.init.zeros_(self.end_time_embed[-1].bias)
        edm = denoiser.config
        self.t_min = 1.0 / (1.0 + edm.sigma_max)
        self.t_max = 1.0 / (1.0 + edm.sigma_min)

    def velocity(
        self, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor, history: torch.Tensor, actions: torch.Tensor
    ) -> torch.Tensor:
        """Algorithm 1. x_s (B, H, C, h, w), start and end flow times s, t (B,) -> v_{s,t} (B, H, C, h, w)."""
        s = s.to(x.device, torch.float32).reshape(-1).expand(x.shape[0])
        t = t.to(x.device, torch.float32).reshape(-1).expand(x.shape[0])
        s_c = s.clamp(self.t_min, self.t_max)
        sigma = (1.0 - s_c) / s_c
        x_edm = x / s_c.reshape(-1, 1, 1, 1, 1).to(x.dtype)
        x1_hat, eps_hat = self.denoiser(x_edm, sigma, history, actions, cond=self.end_time_embed(t - s))
        return x1_hat - eps_hat

    def step(self, x, s, t, history, actions) -> torch.Tensor:
        """X_{s,t}(x) = x + (t - s) v_{s,t}(x)."""
        v = self.velocity(x, s, t, history, actions)
        dt = (t - s).to(x.device, x.dtype).reshape(-1).expand(x.shape[0]).reshape(-1, 1, 1, 1, 1)
        return x + dt * v

    def times(self, steps: int) -> torch.Tensor:
        """The k + 1 flow times of a k-step sample: uniform from t_min to 1."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        return torch.linspace(self.t_min, 1.0, steps + 1)

    def sample(
        self,
        history: torch.Tensor,
        actions: torch.Tensor,
        steps: int = 4,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """k-step flow-map sample of the future latents (B, H, C, h, w); ``steps`` network evaluations.

        Differentiable with respect to ``actions`` and ``history`` (no ``no_grad`` inside).
        """
        B = history.shape[0]
        shape = (B, self.denoiser.net.config.horizon, *history.shape[2:])
        if noise is None:
            noise = torch.randn(shape, generator=generator).to(history.device)
        x = (1.0 - self.t_min) * noise.to(history.dtype)
        ts = self.times(steps).to(history.device)
        for i in range(steps):
            x = self.step(x, ts[i].expand(B), ts[i + 1].expand(B), history, actions)
        return x


# ------------------------------------------------------------------------------------- losses
def interpolate(x1: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = t x1 + (1 - t) x0 with t (B,)."""
    t = t.to(x1.dtype).reshape(-1, *([1] * (x1.ndim - 1)))
    return t * x1 + (1.0 - t) * x0


def flow_loss(velocity, x1: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """L_flow: || v_{t,t}(x_t) - (x1 - x0) ||^2, mean over elements. ``velocity(x, s, t)`` -> v."""
    v = velocity(interpolate(x1, x0, t), t, t)
    return ((v.float() - (x1 - x0)) ** 2).mean()


def semigroup_loss(velocity, x1: torch.Tensor, x0: torch.Tensor, s, u, t) -> torch.Tensor:
    """L_distill: || X_{s,t}(x_s) - sg(X_{u,t}(X_{s,u}(x_s))) ||^2 for s < u < t (each (B,))."""

    def flow(x, a, b):
        return x + (b - a).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1))) * velocity(x, a, b)

    x_s = interpolate(x1, x0, s)
    with torch.no_grad():
        teacher = flow(flow(x_s, s, u), u, t)
    student = flow(x_s, s, t)
    return ((student.float() - teacher.float()) ** 2).mean()


def sample_times(batch: int, generator: torch.Generator, t_min: float, sorted_count: int = 1) -> torch.Tensor:
    """Uniform flow times in [t_min, 1), (sorted_count, batch); rows sorted ascending per column."""
    t = t_min + (1.0 - t_min) * torch.rand(sorted_count, batch, generator=generator)
    return t.sort(dim=0).values
