"""Semantic reward: how well each frame, and each image patch, matches the instruction.

Backends share one interface (:class:`~vidplan_server.models.semantic_backend.SemanticBackend`, in its own
module so that every backend depends on it and on nothing else): ``encode_text(texts) -> (M, D)`` once per
instruction, then ``score(images (N, 3, H, W) in [0, 1], text (N, D)) -> SemanticScores`` with

- ``frame`` (N,): the frame score, cosine similarity of the image and text embeddings, in [-1, 1];
- ``relevance`` (N, gh, gw): per-patch relevance to the instruction in [0, 1];
- ``centroid`` (N, 2): (x, y) in [0, 1] image coordinates of the most relevant region
  (:func:`relevance_centroid`).

Default backend (:class:`SimDualEncoder`): a small CLIP-style dual encoder trained by this project on its
sim frames and instructions (``vidplan train semantic``), so it works offline. Decided: besides CLIP's
symmetric InfoNCE over (frame, instruction) pairs it gets a dense term, a per-patch binary
cross-entropy of ``sigmoid(a * cos(patch, text) + b)`` against the target object's simulator mask
(free in sim). CLIP's image-level loss alone does not localise: with a 16 x 16 patch grid the dense term is
what puts the relevance on the instruction's object rather than on the scene around it.

Users with a real CLIP or SigLIP checkpoint load it with :mod:`vidplan_server.models.semantic_hf`.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vidplan_server.models.checkpoint import DEFAULT_CHECKPOINT, load_config, load_weights
from vidplan_server.models.semantic_backend import SemanticBackend, SemanticScores, relevance_centroid

__all__ = [
    "SemanticBackend",
    "SemanticConfig",
    "SemanticScores",
    "SimDualEncoder",
    "Tokenizer",
    "load_semantic",
    "relevance_centroid",
]


# ---------------------------------------------------------------------------------- own dual encoder
def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


@dataclass(frozen=True)
class SemanticConfig:
    vocab: tuple[str, ...] = ()  # words seen in training; unknown words hash into oov_buckets
    oov_buckets: int = 16
    max_words: int = 12
    image_size: tuple[int, int] = (64, 64)  # per view
    channels: tuple[int, int] = (32, 64)  # at 1/2 and 1/4 resolution (the 16 x 16 patch grid)
    dim: int = 64  # joint embedding size


class Tokenizer:
    """Word-level ids: 0 = padding, 1..V = vocabulary, then hashed buckets for unknown words."""

    def __init__(self, config: SemanticConfig) -> None:
        self.config = config
        self.ids = {w: i + 1 for i, w in enumerate(config.vocab)}

    @property
    def size(self) -> int:
        return 1 + len(self.config.vocab) + self.config.oov_buckets

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """(M, max_words) long ids; longer instructions are cut."""
        out = torch.zeros(len(texts), self.config.max_words, dtype=torch.long)
        base = 1 + len(self.config.vocab)
        for i, text in enumerate(texts):
            toks = words(text)[: self.config.max_words]
            for j, w in enumerate(toks):
                out[i, j] = self.ids.get(w, base + zlib.crc32(w.encode()) % self.config.oov_buckets)
        return out


class SimDualEncoder(nn.Module, SemanticBackend):
    """Small CLIP-style dual encoder: a CNN giving 16 x 16 patch embeddings for a 64 x 64 view and a
    one-layer transformer over instruction words."""

    def __init__(self, config: SemanticConfig = SemanticConfig()) -> None:
        super().__init__()
        self.config = config
        self.image_size = tuple(config.image_size)
        self.tokenizer = Tokenizer(config)
        c1, c2 = config.channels
        D = config.dim
        self.image_net = nn.Sequential(
            nn.Conv2d(3, c1, 3, stride=2, padding=1),
            nn.GroupNorm(8, c1),
            nn.SiLU(),
            nn.Conv2d(c1, c1, 3, padding=1),
            nn.GroupNorm(8, c1),
            nn.SiLU(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1),
            nn.GroupNorm(8, c2),
            nn.SiLU(),
            nn.Conv2d(c2, c2, 3, padding=2, dilation=2),
            nn.GroupNorm(8, c2),
            nn.SiLU(),
            nn.Conv2d(c2, c2, 3, padding=4, dilation=4),
            nn.GroupNorm(8, c2),
            nn.SiLU(),
            nn.Conv2d(c2, D, 1),
        )
        self.image_global = nn.Linear(D, D)
        self.word_embed = nn.Embedding(self.tokenizer.size, D, padding_idx=0)
        self.word_pos = nn.Parameter(torch.zeros(config.max_words, D))
        self.text_net = nn.TransformerEncoderLayer(D, 4, 2 * D, dropout=0.0, batch_first=True, norm_first=True)
        self.text_out = nn.Linear(D, D)
        self.logit_scale = nn.Parameter(torch.tensor(2.659))  # ln(1 / 0.07), CLIP's initial temperature
        self.dense_scale = nn.Parameter(torch.tensor(5.0))
        self.dense_bias = nn.Parameter(torch.tensor(-2.0))
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1), persistent=False)

    # -------------------------------------------------------------- encoders
    def _device(self) -> torch.device:
        return self.logit_scale.device

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(texts).to(self._device())
        pad = ids == 0
        pad[:, 0] = False  # an empty instruction still attends to one (padding) token
        x = self.word_embed(ids) + self.word_pos[None, : ids.shape[1]]
        x = self.text_net(x, src_key_padding_mask=pad)
        keep = (~pad).float()[..., None]
        pooled = (x * keep).sum(1) / keep.sum(1)
        return F.normalize(self.text_out(pooled), dim=-1)

    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (N, 3, H, W) in [0, 1] -> (global (N, D), patches (N, D, gh, gw)), both unit-norm."""
        if tuple(images.shape[-2:]) != self.image_size:
            images = F.interpolate(images, size=self.image_size, mode="bilinear", align_corners=False, antialias=True)
        feats = self.image_net(images - self.mean)
        glob = self.image_global(feats.mean((2, 3)))
        return F.normalize(glob, dim=-1), F.normalize(feats, dim=1)

    def dense_logits(self, patches: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(N, gh, gw) relevance logits of unit-norm patches (N, D, gh, gw) for text (N, D)."""
        return self.dense_scale * torch.einsum("ndhw,nd->nhw", patches, text) + self.dense_bias

    def score(self, images: torch.Tensor, text: torch.Tensor) -> SemanticScores:
        glob, patches = self.encode_image(images)
        relevance = torch.sigmoid(self.dense_logits(patches, text))
        return SemanticScores((glob * text).sum(-1), relevance, relevance_centroid(relevance))


def clip_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between unit-norm image (B, D) and text (B, D) embeddings; ``same`` (B, B) bool marks
    pairs with the same instruction, which all count as positives (soft targets)."""
    logits = scale.exp().clamp(max=100.0) * image @ text.T
    target = same.float() / same.float().sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target.T / target.T.sum(1, keepdim=True)))


def load_semantic(
    ckpt: str | Path | None = None, clip_folder: str | Path | None = None, device: str | torch.device = "cpu"
) -> SemanticBackend:
    """The semantic reward: a user's CLIP / SigLIP folder when given, else the bundle's ``semantic`` module."""
    if clip_folder is not None:
        from vidplan_server.models.semantic_hf import HFDualEncoder

        return HFDualEncoder(clip_folder, device)
    ckpt = Path(ckpt) if ckpt is not None else DEFAULT_CHECKPOINT
    model = SimDualEncoder(load_config(ckpt, "semantic", SemanticConfig))
    return load_weights(ckpt, "semantic", model).to(device).eval()
