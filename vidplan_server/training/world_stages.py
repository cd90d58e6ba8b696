"""World-model stages: the EDM video denoiser, then its flow-map distillation (Algorithm 2).

Both read latent windows made by :mod:`vidplan_server.data.windows` with the bundle's codec.
Held-out metrics use fixed noise, so successive evaluations are comparable:

- world:   ``loss`` (Eq. 2 at fixed sigmas and noise), ``mse_heun`` (latent MSE of an 8-level
           Heun sample against the true future latents), ``mse_mean`` (MSE of the denoiser at sigma_max, i.e. its
           estimate of the conditional mean future; compare ``mse_copy``, copying the current frame) and
           ``mean_action_gain`` (the action gain of that mean: less diluted by sampling noise than the Heun
           sample's ``action_gain``).
- flowmap: ``mse_k1``, ``mse_k2``, ``mse_k4`` (latent MSE of k-step samples) and ``flow_loss``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vidplan_server.data.windows import LatentWindows
from vidplan_server.models.checkpoint import save_module
from vidplan_server.models.edm import EDMDenoiser, edm_loss, heun_sample
from vidplan_server.models.flow_map import FlowMap, flow_loss, sample_times, semigroup_loss
from vidplan_server.models.world_model import FlowConfig, WorldConfig, build_denoiser, build_flow_map
from vidplan_server.training.loop import Stage

EVAL_WINDOWS = 16


def _fixed_noise(shape, seed: int = 1234) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


class _WindowStage(Stage):
    """A stage whose batches are random training windows (history, actions, future)."""

    train_windows: LatentWindows

    def batch(self, generator, batch_size, device):
        idx = torch.randint(len(self.train_windows), (batch_size,), generator=generator)
        return self.train_windows.gather(idx, device)


def action_gain(mse: float, shuffled: torch.Tensor, fut: torch.Tensor) -> dict[str, float]:
    """How much the model's prediction depends on the actions: the held-out MSE with every window's actions
    replaced by another window's (same history, same noise) minus the MSE with its own, as a share of the
    latter. 0: the model ignores the actions (it predicts one future per history whatever the robot does,
    and a planner cannot tell its proposals apart); the more positive, the more the actions explain."""
    mse_shuffled = ((shuffled.float() - fut) ** 2).mean().item()
    return {"mse_shuffled_actions": mse_shuffled, "action_gain": (mse_shuffled - mse) / max(mse, 1e-12)}


class WorldStage(_WindowStage):
    name = "world"

    def __init__(self, config: WorldConfig, train: LatentWindows, held_out: LatentWindows) -> None:
        self.config = config
        self.model = build_denoiser(config)
        self.train_windows = train
        self.held_out = held_out

    def loss(self, model: EDMDenoiser, batch, generator):
        hist, act, fut = batch
        return edm_loss(model, fut, hist, act, generator), {}

    def evaluate(self, model: EDMDenoiser, device):
        hist, act, fut = self.held_out.gather(self.held_out.spread(EVAL_WINDOWS), device)
        g = torch.Generator().manual_seed(0)
        loss = sum(edm_loss(model, fut, hist, act, g).item() for _ in range(4)) / 4
        noise = _fixed_noise(fut.shape).to(device)
        pred = heun_sample(model, hist, act, steps=8, noise=noise)
        mse = ((pred.float() - fut) ** 2).mean().item()
        shuffled = heun_sample(model, hist, act.roll(1, dims=0), steps=8, noise=noise)
        s_max = torch.full((len(fut),), model.config.sigma_max, device=device)
        mean = model(noise * model.config.sigma_max, s_max, hist, act)[0]
        mse_mean = ((mean.float() - fut) ** 2).mean().item()
        mean_shuffled = model(noise * model.config.sigma_max, s_max, hist, act.roll(1, dims=0))[0]
        gain = action_gain(mse_mean, mean_shuffled, fut)["action_gain"]
        return {
            "loss": loss,
            "mse_heun": mse,
            **action_gain(mse, shuffled, fut),
            "mse_mean": mse_mean,
            "mse_copy": ((hist[:, -1:] - fut) ** 2).mean().item(),
            "mean_action_gain": gain,
        }

    def export(self, model, ckpt: Path, meta: dict) -> None:
        save_module(ckpt, "world", model, self.config, meta)


class FlowMapStage(_WindowStage):
    """Algorithm 2: two thirds of each batch for L_flow, one third for the semigroup L_distill."""

    name = "flowmap"

    def __init__(
        self,
        config: FlowConfig,
        denoiser: EDMDenoiser,
        train: LatentWindows,
        held_out: LatentWindows,
        flow_share: float = 2.0 / 3.0,
    ) -> None:
        self.config = config
        self.model = build_flow_map(config, denoiser)
        self.train_windows = train
        self.held_out = held_out
        self.flow_share = flow_share

    def loss(self, model: FlowMap, batch, generator):
        hist, act, fut = batch
        B = fut.shape[0]
        n_flow = max(1, min(B - 1, round(B * self.flow_share))) if B > 1 else 1
        x0 = torch.randn(fut.shape, generator=generator).to(fut.device)
        t = sample_times(n_flow, generator, model.t_min)[0].clamp(max=model.t_max).to(fut.device)
        vel = lambda h, a: lambda x, s, e: model.velocity(x, s, e, h, a)
        l_flow = flow_loss(vel(hist[:n_flow], act[:n_flow]), fut[:n_flow], x0[:n_flow], t)
        if n_flow == B:
            return l_flow, {"flow": l_flow.item()}
        s, u, e = sample_times(B - n_flow, generator, model.t_min, sorted_count=3).to(fut.device)
        d = slice(n_flow, B)
        l_distill = semigroup_loss(vel(hist[d], act[d]), fut[d], x0[d], s, u, e)
        return l_flow + l_distill, {"flow": l_flow.item(), "distill": l_distill.item()}

    def evaluate(self, model: FlowMap, device):
        hist, act, fut = self.held_out.gather(self.held_out.spread(EVAL_WINDOWS), device)
        noise = _fixed_noise(fut.shape).to(device)
        out = {}
        for k in (1, 2, 4):
            pred = model.sample(hist, act, steps=k, noise=noise)
            out[f"mse_k{k}"] = ((pred.float() - fut) ** 2).mean().item()
        out.update(action_gain(out["mse_k1"], model.sample(hist, act.roll(1, dims=0), steps=1, noise=noise), fut))
        t = torch.linspace(model.t_min, model.t_max, fut.shape[0], device=device)
        out["flow_loss"] = flow_loss(lambda x, s, e: model.velocity(x, s, e, hist, act), fut, noise, t).item()
        return out

    def export(self, model, ckpt: Path, meta: dict) -> None:
        save_module(ckpt, "flow_map", model, self.config, meta)
