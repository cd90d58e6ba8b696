"""Small models for the model tests: a tiny backbone config and an oracle that knows the answer."""

from __future__ import annotations

import torch
from torch import nn

from vidplan_server.models.video_net import VideoNet, VideoNetConfig


def tiny_net_config(**kw) -> VideoNetConfig:
    base = dict(channels=(8, 16), attention_heads=2, embed_dim=16, fourier_features=4, history=2, horizon=3)
    base.update(kw)
    return VideoNetConfig(**base)


def randomise_output(net: VideoNet, scale: float = 0.3) -> None:
    """Give the zero-initialised output layer random weights, as after training."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        net.conv_out.weight.copy_(torch.randn(net.conv_out.weight.shape, generator=g) * scale)


class OracleNet(nn.Module):
    """A backbone whose EDM denoiser returns ``target`` exactly: F = (target - c_skip x) / c_out.

    Models data that is a point mass at ``target`` (B=1 broadcast), for which the exact denoiser,
    velocity and flow map are known in closed form.
    """

    def __init__(self, target: torch.Tensor, config: VideoNetConfig, sigma_data: float = 0.7) -> None:
        super().__init__()
        self.target = target
        self.config = config
        self.sd = sigma_data
        self.calls = 0
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x_in, history, actions, c_noise, cond=None):
        self.calls += 1
        sigma = torch.exp(4 * c_noise).reshape(-1, 1, 1, 1, 1)
        x = x_in * torch.sqrt(sigma**2 + self.sd**2)
        c_skip = self.sd**2 / (sigma**2 + self.sd**2)
        c_out = sigma * self.sd / torch.sqrt(sigma**2 + self.sd**2)
        return (self.target - c_skip * x) / c_out + 0 * self.dummy
