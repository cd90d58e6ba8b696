"""The world model as the planner sees it: codec + EDM denoiser + flow map, loaded from one bundle.

Module configs stored in the bundle (``config.json`` -> ``modules.<name>.config``):

- ``codec``     :class:`~vidplan_server.models.codec.CodecConfig` (with the latent shift / scale)
- ``world``     :class:`WorldConfig` -- backbone, EDM constants (sigma_data measured on training
                latents), frame geometry and the action statistics
- ``flow_map``  :class:`FlowConfig` -- the world config it was distilled from plus its own

Timing contract (DESIGN "Actions"): predicted frame i (0-based) is the observation ``(i + 1) *
frame_stride`` control steps after the current one, and its action is the control-rate action at step
``(i + 1) * frame_stride - 1`` (the pose target that leads to that frame). History frame j of T is the
observation ``(T - 1 - j) * frame_stride`` steps before the current one (the current frame is last).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vidplan_server.models.actions import ActionNormalizer, ActionStats
from vidplan_server.models.checkpoint import (
    DEFAULT_CHECKPOINT,
    CheckpointError,
    load_config,
    load_weights,
    read_manifest,
)
from vidplan_server.models.codec import Codec, CodecConfig
from vidplan_server.models.edm import EDMConfig, EDMDenoiser, heun_sample
from vidplan_server.models.flow_map import FlowMap, FlowMapConfig
from vidplan_server.models.video_net import VideoNet, VideoNetConfig


@dataclass(frozen=True)
class WorldConfig:
    actions: ActionStats
    net: VideoNetConfig = field(default_factory=VideoNetConfig)
    edm: EDMConfig = field(default_factory=EDMConfig)
    frame_stride: int = 3  # control steps per model frame (15 Hz / 3 = 5 Hz)

    def __post_init__(self) -> None:
        if self.frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {self.frame_stride}")


@dataclass(frozen=True)
class FlowConfig:
    world: WorldConfig
    flow: FlowMapConfig = field(default_factory=FlowMapConfig)


def build_denoiser(config: WorldConfig) -> EDMDenoiser:
    return EDMDenoiser(VideoNet(config.net), config.edm)


def build_flow_map(config: FlowConfig, denoiser: EDMDenoiser | None = None) -> FlowMap:
    """A flow map around a copy of ``denoiser`` (or a fresh one built from the config)."""
    base = copy.deepcopy(denoiser) if denoiser is not None else build_denoiser(config.world)
    return FlowMap(base, config.flow)


def load_codec(ckpt: str | Path) -> Codec:
    return load_weights(ckpt, "codec", Codec(load_config(ckpt, "codec", CodecConfig)))


def load_denoiser(ckpt: str | Path) -> tuple[EDMDenoiser, WorldConfig]:
    config = load_config(ckpt, "world", WorldConfig)
    return load_weights(ckpt, "world", build_denoiser(config)), config


def load_flow_map(ckpt: str | Path) -> tuple[FlowMap, FlowConfig]:
    config = load_config(ckpt, "flow_map", FlowConfig)
    return load_weights(ckpt, "flow_map", build_flow_map(config)), config


class WorldModel:
    """Encode frames, roll out action chunks (diffusion or k-step flow map), decode latents."""

    def __init__(self, codec: Codec, config: WorldConfig, denoiser: EDMDenoiser | None, flow_map: FlowMap | None):
        if denoiser is None and flow_map is None:
            raise CheckpointError("a world model needs a 'world' (diffusion) or a 'flow_map' module")
        self.codec = codec
        self.config = config
        self.denoiser = denoiser
        self.flow_map = flow_map
        self.normalizer = ActionNormalizer(config.actions)

    @classmethod
    def load(cls, ckpt: str | Path | None = None, device: str | torch.device = "cpu") -> WorldModel:
        """Load the bundle at ``ckpt`` (default: the checkpoint shipped in the package)."""
        ckpt = Path(ckpt) if ckpt is not None else DEFAULT_CHECKPOINT
        modules = read_manifest(ckpt)["modules"]
        if "codec" not in modules:
            raise CheckpointError(f"{ckpt}: the bundle has no codec module (train one with `vidplan train codec`)")
        codec = load_codec(ckpt)
        denoiser = flow_map = None
        config = None
        if "world" in modules:
            denoiser, config = load_denoiser(ckpt)
        if "flow_map" in modules:
            flow_map, flow_config = load_flow_map(ckpt)
            config = config or flow_config.world
        if config is None:
            raise CheckpointError(f"{ckpt}: the bundle has neither a 'world' nor a 'flow_map' module")
        model = cls(codec, config, denoiser, flow_map)
        return model.to(device).eval()

    # ------------------------------------------------------------------ plumbing
    def modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.codec, self.denoiser, self.flow_map) if m is not None]

    def to(self, device: str | torch.device) -> WorldModel:
        for m in self.modules():
            m.to(device)
        return self

    def eval(self) -> WorldModel:
        for m in self.modules():
            m.eval()
            m.requires_grad_(False)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.codec.parameters()).device

    @property
    def horizon(self) -> int:
        return self.config.net.horizon

    @property
    def history(self) -> int:
        return self.config.net.history

    # ------------------------------------------------------------------ encode / decode
    def encode(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Frames (..., V, H, W, 3) uint8 -> latents (..., C, V*h, w) on the model's device."""
        x = torch.as_tensor(np.asarray(frames) if not torch.is_tensor(frames) else frames, device=self.device)
        x = x.movedim(-1, -3).float() / 255.0
        return self.codec.encode(x)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (..., C, V*h, w) -> frames (..., V, 3, H, W) float in [0, 1] (clamped)."""
        return self.codec.decode(latents).clamp(0.0, 1.0)

    # ------------------------------------------------------------------ rollouts
    def rollout(
        self,
        history: torch.Tensor,
        actions: torch.Tensor,
        method: str = "flow",
        steps: int = 4,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Predict future latents (B, H, C, h, w) from history latents (B, T, C, h, w) and raw actions
        (B, H, 7) in DROID's cartesian_position + gripper space.

        ``method="flow"``: the k-step flow map (``steps`` = k network evaluations), differentiable with
        respect to ``actions``. ``method="diffusion"``: EDM Heun with ``steps`` levels
        (2 * steps - 1 evaluations).
        """
        a = self.normalizer.normalize(actions.to(history.device, torch.float32))
        if method == "flow":
            if self.flow_map is None:
                raise CheckpointError("this checkpoint has no flow_map module (train one with `vidplan train flowmap`)")
            return self.flow_map.sample(history, a, steps=steps, noise=noise, generator=generator)
        if method == "diffusion":
            if self.denoiser is None:
                raise CheckpointError("this checkpoint has no world (diffusion) module")
            return heun_sample(self.denoiser, history, a, steps=steps, noise=noise, generator=generator)
        raise ValueError(f"method must be 'flow' or 'diffusion', got {method!r}")


def network_evaluations(method: str, steps: int) -> int:
    """Network evaluations of one rollout: k for the flow map, 2 * steps - 1 for EDM Heun."""
    return steps if method == "flow" else 2 * steps - 1
