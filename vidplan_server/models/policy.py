"""The robot's own policy: language-conditioned behaviour cloning with a flow-matching action head.

It stands in for pi0.5 in the paper: the baseline a user compares VidPlan against, and the proposer's source
of candidate chunks (Section 3.4, "samples of the robot's own policy and perturbations of them").

Inputs, for one observation (tensors enter :meth:`FlowPolicy.sample` / :meth:`FlowPolicy.loss`):

- ``images`` (B, V, 3, H, W) float in [0, 1]: the current frame of the three DROID views (CAMERA_NAMES order)
  at the policy's ``image_size``;
- ``state`` (B, 7): TCP pose (x, y, z m; roll, pitch, yaw rad, extrinsic XYZ) + gripper in [0, 1];
- ``tokens`` (B, max_words) word ids of the instruction (:class:`~vidplan_server.models.semantic.Tokenizer`;
  the vocabulary is the ``train`` split's instruction words, unknown words share hashed buckets).

Output: a chunk (B, S, 7) of DROID ``cartesian_position`` + gripper actions at the control rate (15 Hz),
``S = chunk`` (15 by default: one second, the planner's horizon).

Decisions:

- **Action representation.** The head models the chunk relative to the current pose: position offsets
  ``p_s - p_0``, orientation offsets ``wrap(rpy_s - rpy_0)`` (small over one second, and the wrap makes a
  top-down roll near +-pi continuous), each divided by a per-dimension scale (the 99th percentile of its
  absolute value in the training data, stored in the config), and the gripper as ``2 g - 1``. Relative
  targets make one chunk mean the same motion wherever the arm is.
- **Vision.** One small CNN shared by the views (plus a learned per-view embedding), FiLM-conditioned on the
  instruction in every block so that *which* object the features keep depends on the words, flattened at
  4 x 4 so the layout (where the object is) survives (``pooling="flatten"``, the bundled policy). Measured: that
  policy memorises its training scenes -- its chunks head for the instructed object in 0.87 of the steps of
  training episodes and 0.53 of held-out ``val`` ones -- and the wide linear layer on the flattened maps is where
  it can. ``pooling="spatial_softmax"`` (Levine et al. 2016, Diffusion Policy's vision head) instead reduces
  every channel to the softmax-weighted mean position of its activation and its mean: a few coordinates per
  channel that say where the (instruction-modulated) features are, precisely, with far fewer weights after it.
- **Flow matching** (as pi0 / pi0.5): ``x_t = (1 - t) x_0 + t x_1`` with ``x_0 ~ N(0, I)`` noise at t = 0 and
  the data ``x_1`` at t = 1 (the project's flow-time direction, see ``models/flow_map.py``). Decided: the
  network predicts the clean chunk ``x_1`` (its loss is the MSE to it) and the velocity is
  ``(x1_hat - x_t) / (1 - t)``, instead of regressing the velocity ``x_1 - x_0`` directly as pi0 does: a small
  MLP has to learn a ``1 / (1 - t)`` gain on its input to regress the velocity, and in our tests it did not fit
  even one fixed chunk in 400 steps, while the ``x_1`` prediction fit it at once. Both define the same
  probability path. Sampling integrates ``flow_steps`` Euler steps from the noise; the last step lands on the
  prediction. Different noise gives different chunks (multi-modal: e.g. two objects that match the words), and
  the same noise the same chunk, so a seeded request is reproducible.
- **Target-map input** (``target_map``, the bundle's ``goal_policy`` module; off for ``policy``). A fourth
  channel per view: ``target`` (B, V, h, w) in [0, 1], the semantic encoder's relevance of the instruction over
  that view (the CLIP stand-in's map, any grid; resized to the image), zeros where absent. Why: the closed loop
  showed that on ``ood`` scenes the policy's samples do not go for the instructed object (23 of vidplan's 39
  failures never came within 5 cm of it, 12 grasped another object), so selecting among them cannot help, while
  the semantic encoder, trained on captions of every object, does highlight ``ood`` objects. The map says *which*
  object in image space, where the policy's convolutions align the grasp; a 3-D point from the target locator
  did not work (its (x, y) is 8 cm off on ``ood`` and nearer another object in 59 % of frames). The policy trains
  on the same ``train``-split robot episodes as ``policy``, with the instruction's object words replaced by
  unknown ones half of the time, so that it follows the map where it does not know the words
  (``training/policy_stage.py``); the instruction still says what to do with the object (pick, or put where).
- **Where is the instructed object? An auxiliary loss** (``target_aux``, the weight; 0 keeps the older bundles'
  networks). A linear head reads the observation features and predicts the instructed object's position relative
  to the TCP, ``(p_object - p_tcp) / TARGET_SCALE_M``, regressed (MSE) against the simulator's ground truth of the
  ``train`` recordings; samples without it (DAgger folders, real DROID data) have NaN and are left out of the term.
  Why: the closed loop showed the policy's failures are mostly *which* object, not how to grasp it (on ``val``, 11
  of its 25 failures never came within 5 cm of the instructed object and 8 grasped another), while the flow loss
  alone gives the vision only a weak, indirect signal about the words' referent. The head is a training signal
  only (the sampler never reads it) -- the same privileged-information trick as auxiliary state prediction in
  pixel-based BC -- and it uses only what ``train``-split robot recordings hold, so the ``ood`` split stays as
  unseen to the policy as before. ``predict_target`` exposes it for the held-out metric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from vidplan_client.contract import CAMERA_NAMES

from vidplan_server.models.semantic import SemanticConfig, Tokenizer

ACTION_DIM = 7
TARGET_SCALE_M = 0.25  # the auxiliary head's unit: object-minus-TCP offsets are divided by this (m)
POOLINGS = ("flatten", "spatial_softmax")


@dataclass(frozen=True)
class PolicyConfig:
    vocab: tuple[str, ...] = ()  # instruction words of the training split
    oov_buckets: int = 16
    max_words: int = 12
    image_size: tuple[int, int] = (64, 64)  # (H, W) per view
    views: tuple[str, ...] = CAMERA_NAMES
    chunk: int = 15  # control steps per chunk
    channels: tuple[int, ...] = (16, 32, 64, 128)  # CNN blocks, each halves the resolution
    text_dim: int = 64
    feature_dim: int = 256
    hidden: int = 512  # width of the velocity MLP
    flow_steps: int = 10  # Euler steps when sampling
    # Offsets of the chunk from the current pose are divided by these (x, y, z m; roll, pitch, yaw rad).
    delta_scale: tuple[float, ...] = (0.2, 0.2, 0.2, 0.5, 0.5, 0.5)
    position_mean: tuple[float, float, float] = (0.5, 0.0, 0.25)  # TCP position normalisation (m)
    position_std: tuple[float, float, float] = (0.1, 0.15, 0.1)
    pooling: str = "flatten"  # "flatten" the last feature map, or "spatial_softmax" keypoints (see the docstring)
    target_map: bool = False  # a 4th input channel per view: the instruction's relevance map (see the docstring)
    target_aux: float = 0.0  # weight of the auxiliary where-is-the-object loss; 0: no such head (see the docstring)

    def __post_init__(self) -> None:
        if len(self.delta_scale) != 6 or min(self.delta_scale) <= 0:
            raise ValueError(f"delta_scale must be 6 positive numbers, got {self.delta_scale}")
        if self.chunk < 1 or self.flow_steps < 1:
            raise ValueError("chunk and flow_steps must be >= 1")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.target_aux < 0:
            raise ValueError(f"target_aux must be >= 0, got {self.target_aux}")
        if min(self.image_size) < 2 ** len(self.channels):
            raise ValueError(f"image_size {self.image_size} is too small for {len(self.channels)} blocks")


def wrap_angle(a: torch.Tensor) -> torch.Tensor:
    """Angles (any shape, rad) wrapped to [-pi, pi)."""
    return torch.remainder(a + math.pi, 2 * math.pi) - math.pi


class ChunkCodec:
    """Absolute chunks <-> the head's normalised relative representation (see the module docstring)."""

    def __init__(self, config: PolicyConfig) -> None:
        self.scale = torch.tensor(config.delta_scale, dtype=torch.float32)

    def encode(self, chunk: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """chunk (B, S, 7) absolute, state (B, 7) -> (B, S, 7) normalised."""
        scale = self.scale.to(chunk.device)
        pos = (chunk[..., :3] - state[:, None, :3]) / scale[:3]
        rot = wrap_angle(chunk[..., 3:6] - state[:, None, 3:6]) / scale[3:]
        grip = chunk[..., 6:7] * 2.0 - 1.0
        return torch.cat([pos, rot, grip], -1)

    def decode(self, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """(B, S, 7) normalised, state (B, 7) -> absolute chunk (B, S, 7); gripper clipped to [0, 1]."""
        scale = self.scale.to(x.device)
        pos = state[:, None, :3] + x[..., :3] * scale[:3]
        rot = wrap_angle(state[:, None, 3:6] + x[..., 3:6] * scale[3:])
        grip = ((x[..., 6:7] + 1.0) / 2.0).clamp(0.0, 1.0)
        return torch.cat([pos, rot, grip], -1)


def timestep_embedding(t: torch.Tensor, dim: int = 32) -> torch.Tensor:
    """t (B,) in [0, 1] -> (B, dim) sinusoidal features."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * (-math.log(1000.0) / half))
    arg = t[:, None].float() * 1000.0 * freqs[None]
    return torch.cat([arg.sin(), arg.cos()], -1)


class _FiLMBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, text_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.norm = nn.GroupNorm(8, c_out)
        self.film = nn.Linear(text_dim, 2 * c_out)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.conv1(x))
        gamma, beta = self.film(text)[:, :, None, None].chunk(2, 1)
        return F.silu(self.norm(self.conv2(x)) * (1 + gamma) + beta) + x


class FlowPolicy(nn.Module):
    """Observation encoder + flow-matching MLP over the whole chunk (predicts the clean chunk)."""

    def __init__(self, config: PolicyConfig = PolicyConfig()) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = Tokenizer(
            SemanticConfig(vocab=config.vocab, oov_buckets=config.oov_buckets, max_words=config.max_words)
        )
        self.chunk_codec = ChunkCodec(config)
        self.words = nn.Embedding(self.tokenizer.size, config.text_dim, padding_idx=0)
        self.text_mlp = nn.Sequential(
            nn.Linear(config.text_dim, config.text_dim), nn.SiLU(), nn.Linear(config.text_dim, config.text_dim)
        )
        chans = (3 + config.target_map, *config.channels)
        self.blocks = nn.ModuleList(
            _FiLMBlock(a, b, config.text_dim) for a, b in zip(chans[:-1], chans[1:], strict=True)
        )
        self.view_embed = nn.Parameter(torch.zeros(len(config.views), config.channels[-1], 1, 1))
        h, w = (s // 2 ** len(config.channels) for s in config.image_size)
        if config.pooling == "spatial_softmax":
            flat = len(config.views) * config.channels[-1] * 3  # (x, y) keypoint + mean activation per channel
            self.log_temperature = nn.Parameter(torch.zeros(()))
            self.register_buffer(
                "grid",
                torch.stack(torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij"), 0)
                .flip(0)
                .reshape(2, h * w),
                persistent=False,
            )  # (2, h*w): x then y in [-1, 1]
        else:
            flat = len(config.views) * config.channels[-1] * h * w
        self.register_buffer("pos_mean", torch.tensor(config.position_mean), persistent=False)
        self.register_buffer("pos_std", torch.tensor(config.position_std), persistent=False)
        self.obs = nn.Sequential(
            nn.Linear(flat + 10 + config.text_dim, config.feature_dim),
            nn.SiLU(),
            nn.LayerNorm(config.feature_dim),
        )
        d = config.chunk * ACTION_DIM
        self.velocity = nn.Sequential(
            nn.Linear(d + 32 + config.feature_dim, config.hidden),
            nn.SiLU(),
            nn.Linear(config.hidden, config.hidden),
            nn.SiLU(),
            nn.Linear(config.hidden, config.hidden),
            nn.SiLU(),
            nn.Linear(config.hidden, d),
        )
        self.target_head = nn.Linear(config.feature_dim, 3) if config.target_aux > 0 else None

    @property
    def device(self) -> torch.device:
        return self.words.weight.device

    def encode_text(self, instructions: list[str]) -> torch.Tensor:
        """(B, text_dim): mean of the instruction's word embeddings through an MLP."""
        ids = self.tokenizer(instructions).to(self.device)
        mask = (ids > 0).float()[..., None]
        pooled = (self.words(ids) * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return self.text_mlp(pooled)

    def encode_obs(
        self, images: torch.Tensor, state: torch.Tensor, text: torch.Tensor, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        """images (B, V, 3, H, W) in [0, 1], state (B, 7), text (B, text_dim), target (B, V, h, w) in [0, 1] or None
        (a ``target_map`` policy then sees zeros; another ignores it) -> features (B, feature_dim)."""
        B, V = images.shape[:2]
        if self.config.target_map:
            images = torch.cat([images, self.map_channel(target, images)], 2)
        x = images.flatten(0, 1) * 2.0 - 1.0
        t = text.repeat_interleave(V, 0)
        for block in self.blocks:
            x = block(x, t)
        x = x.unflatten(0, (B, V)) + self.view_embed
        if self.config.pooling == "spatial_softmax":
            x = self.keypoints(x)
        pos = (state[:, :3] - self.pos_mean) / self.pos_std
        rot = torch.cat([state[:, 3:6].sin(), state[:, 3:6].cos()], -1)
        s = torch.cat([pos, rot, state[:, 6:7] * 2.0 - 1.0], -1)
        return self.obs(torch.cat([x.flatten(1), s, text], -1))

    @staticmethod
    def map_channel(target: torch.Tensor | None, images: torch.Tensor) -> torch.Tensor:
        """target (B, V, h, w) or None -> (B, V, 1, H, W) at the images' size (bilinear), zeros for None."""
        B, V, _, H, W = images.shape
        if target is None:
            return images.new_zeros(B, V, 1, H, W)
        m = target.to(images.device, images.dtype).flatten(0, 1)[:, None]
        if m.shape[-2:] != (H, W):
            m = F.interpolate(m, size=(H, W), mode="bilinear", align_corners=False)
        return m.view(B, V, 1, H, W)

    def keypoints(self, x: torch.Tensor) -> torch.Tensor:
        """Spatial softmax: feature maps (B, V, C, h, w) -> (B, V, C, 3), per channel the softmax-weighted mean
        (x, y) image position in [-1, 1] and the mean activation."""
        flat = x.flatten(-2)  # (B, V, C, h*w)
        attn = torch.softmax(flat / self.log_temperature.exp(), -1)
        xy = torch.einsum("bvcn,kn->bvck", attn, self.grid)
        return torch.cat([xy, flat.mean(-1, keepdim=True)], -1)

    def predict_clean(self, x: torch.Tensor, t: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """x (B, S, 7) at flow time t (B,) -> the predicted clean chunk x1_hat (B, S, 7), normalised."""
        inp = torch.cat([x.flatten(1), timestep_embedding(t), features], -1)
        return self.velocity(inp).view_as(x)

    def loss(
        self,
        images: torch.Tensor,
        state: torch.Tensor,
        instructions: list[str],
        chunk: torch.Tensor,
        generator: torch.Generator | None = None,
        target: torch.Tensor | None = None,
        target_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The training loss of absolute target chunks (B, S, 7) (``target`` maps as in :meth:`encode_obs`):
        the flow-matching term plus ``target_aux`` times the auxiliary term (:meth:`loss_terms`)."""
        return self.weighted(self.loss_terms(images, state, instructions, chunk, generator, target, target_pos))

    def weighted(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training loss from :meth:`loss_terms`: ``flow + target_aux * target`` (``target`` absent: 0)."""
        return terms["flow"] + self.config.target_aux * terms.get("target", terms["flow"].new_zeros(()))

    def loss_terms(
        self,
        images: torch.Tensor,
        state: torch.Tensor,
        instructions: list[str],
        chunk: torch.Tensor,
        generator: torch.Generator | None = None,
        target: torch.Tensor | None = None,
        target_pos: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``flow``: the flow-matching MSE; ``target`` (only with a ``target_head`` and some finite row of
        ``target_pos`` (B, 3), the instructed object's base-frame position in m, NaN where unknown): the MSE of the
        predicted object-minus-TCP offset in units of :data:`TARGET_SCALE_M` over the known rows."""
        x1 = self.chunk_codec.encode(chunk, state)
        B = len(x1)
        x0 = torch.randn(x1.shape, generator=generator).to(x1.device)
        t = torch.rand(B, generator=generator).to(x1.device)
        xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * x1
        features = self.encode_obs(images, state, self.encode_text(instructions), target)
        terms = {"flow": F.mse_loss(self.predict_clean(xt, t, features), x1)}
        if self.target_head is not None and target_pos is not None:
            known = torch.isfinite(target_pos).all(-1)
            if bool(known.any()):
                goal = (target_pos[known] - state[known, :3]) / TARGET_SCALE_M
                terms["target"] = F.mse_loss(self.target_head(features[known]), goal)
        return terms

    def predict_target(
        self, images: torch.Tensor, state: torch.Tensor, instructions: list[str], target: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The auxiliary head's estimate of the instructed object's base-frame position (B, 3) in m."""
        if self.target_head is None:
            raise ValueError("this policy has no target head (target_aux is 0)")
        features = self.encode_obs(images, state, self.encode_text(instructions), target)
        return state[:, :3] + self.target_head(features) * TARGET_SCALE_M

    def sample(
        self,
        images: torch.Tensor,
        state: torch.Tensor,
        instructions: list[str],
        noise: torch.Tensor,
        target: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One chunk per noise draw. images (B, V, 3, H, W), state (B, 7), noise (B, K, S, 7), target maps
        (B, V, h, w) or None -> (B, K, S, 7).

        The observation is encoded once and shared by its K draws.
        """
        B, K = noise.shape[:2]
        features = self.encode_obs(images, state, self.encode_text(instructions), target)
        features = features.repeat_interleave(K, 0)
        x = noise.flatten(0, 1).to(features.device)
        n = self.config.flow_steps
        for i in range(n):
            t = torch.full((len(x),), i / n, device=x.device)
            # Euler step of dt = 1/n along v = (x1_hat - x) / (1 - t): x += (x1_hat - x) / (n - i).
            x = x + (self.predict_clean(x, t, features) - x) / (n - i)
        return self.chunk_codec.decode(x, state.repeat_interleave(K, 0)).unflatten(0, (B, K))


def fit_delta_scale(chunks: np.ndarray, states: np.ndarray) -> tuple[float, ...]:
    """Per-dimension 99th percentile of |chunk - current pose| (N, S, 7) vs (N, 7), floored at 1 mm / 0.01 rad."""
    d = chunks[..., :6] - states[:, None, :6]
    d[..., 3:] = (d[..., 3:] + np.pi) % (2 * np.pi) - np.pi
    q = np.percentile(np.abs(d).reshape(-1, 6), 99, axis=0)
    return tuple(float(max(v, 1e-3 if i < 3 else 1e-2)) for i, v in enumerate(q))


def load_policy(ckpt, name: str = "policy") -> FlowPolicy:
    """The ``policy`` (or ``goal_policy``) module of a checkpoint bundle."""
    from vidplan_server.models.checkpoint import load_config, load_weights

    return load_weights(ckpt, name, FlowPolicy(load_config(ckpt, name, PolicyConfig)))


def with_target_map(policy: FlowPolicy) -> FlowPolicy:
    """A ``target_map`` copy of ``policy`` that, before training, computes exactly what it does: every weight
    copied, the first convolution's new map channel zero. The warm start of ``vidplan train policy --target-map
    --init-from CKPT``."""
    from dataclasses import replace

    if policy.config.target_map:
        raise ValueError("the policy already takes a target map")
    new = FlowPolicy(replace(policy.config, target_map=True))
    state = dict(policy.state_dict())
    w = state["blocks.0.conv1.weight"]  # (C, 3, k, k)
    state["blocks.0.conv1.weight"] = torch.cat([w, w.new_zeros(len(w), 1, *w.shape[2:])], 1)
    new.load_state_dict(state)
    return new
