"""Training windows for the world model: (T history latents, H actions, H future latents).

Frames are encoded once with the bundle's codec and cached in ``<ckpt>/training/latents/`` (keyed by
the codec weights and the dataset), so the world and flow-map stages, and resumed runs, skip encoding.

Window at control step k of an episode (the timing contract of
:mod:`vidplan_server.models.world_model`): history steps ``k - (T - 1 - j) * stride`` (clamped at the
earliest step of the same phase ``k mod stride``, i.e. the first frame repeats, as at the start of a
real run), future steps ``k + (i + 1) * stride`` and action steps ``k + (i + 1) * stride - 1`` for
i < H. Every k with a full future inside the episode is a window.

Phase subsampling (decided for CPU budgets): with ``phases``, episode e only uses windows with
``k mod stride == phases[e]``, so only a third of its frames (stride 3) need encoding. Neighbouring
windows share almost all frames, so little is lost; phases rotate over episodes so every offset
between control steps and model frames is seen.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from vidplan_server.data.episodes import EpisodeArrays, load_episodes
from vidplan_server.data.errors import DatasetError
from vidplan_server.data.reader import EpisodeDataset
from vidplan_server.models.checkpoint import _write_atomic
from vidplan_server.models.codec import Codec


def window_indices(
    lengths: list[int], history: int, horizon: int, stride: int, phases: list[int] | None = None
) -> dict[str, torch.Tensor]:
    """Global row indices (into the concatenated episodes) of every window: history (N, T),
    future (N, H), action (N, H) and the episode of each window (N,)."""
    hist, fut, act, episode = [], [], [], []
    start = 0
    j = np.arange(history)
    i = np.arange(horizon)
    for e, n in enumerate(lengths):
        ks = np.arange(0, n - horizon * stride)
        if phases is not None:
            ks = ks[ks % stride == phases[e] % stride]
        if len(ks):
            earliest = (ks % stride)[:, None]
            hist.append(start + np.maximum(ks[:, None] - (history - 1 - j)[None] * stride, earliest))
            fut.append(start + ks[:, None] + (i[None] + 1) * stride)
            act.append(start + ks[:, None] + (i[None] + 1) * stride - 1)
            episode.append(np.full(len(ks), e))
        start += n
    if not hist:
        raise DatasetError(
            f"no episode is longer than horizon * stride = {horizon * stride} steps, so there is "
            "no training window; record longer episodes or lower --horizon / --frame-stride"
        )
    return {
        k: torch.from_numpy(np.concatenate(v)).long()
        for k, v in (("history", hist), ("future", fut), ("action", act), ("episode", episode))
    }


@torch.no_grad()
def encode_frames(codec: Codec, frames: np.ndarray, device: torch.device, batch: int = 128) -> torch.Tensor:
    """Frames (N, V, H, W, 3) uint8 -> latents (N, C, V*h, w) float16 on CPU."""
    out = []
    for chunk in np.array_split(frames, max(1, int(np.ceil(len(frames) / batch)))):
        x = torch.from_numpy(chunk).to(device).permute(0, 1, 4, 2, 3).float() / 255.0
        out.append(codec.encode(x).half().cpu())
    return torch.cat(out)


def encode_phase(
    codec: Codec, frames: np.ndarray, device: torch.device, stride: int = 1, phase: int | None = None
) -> torch.Tensor:
    """Latents (T, C, V*h, w) float16 of an episode's frames (T, V, H, W, 3); with ``phase``, only steps
    ``t mod stride == phase`` are encoded and the other rows stay zero (windows never read them)."""
    rows = np.arange(len(frames))
    if phase is not None:
        rows = rows[rows % stride == phase % stride]
    z = encode_frames(codec, frames[rows], device)
    full = torch.zeros((len(frames), *z.shape[1:]), dtype=z.dtype)
    full[torch.from_numpy(rows)] = z
    return full


def cached_latents(
    codec: Codec,
    codec_file: Path,
    episodes: list[EpisodeArrays],
    data_root: Path,
    cache_dir: Path,
    device: torch.device,
    progress: bool = True,
    stride: int = 1,
    phases: list[int] | None = None,
) -> list[torch.Tensor]:
    """Latents (T_e, C, V*h, w) per episode, from the cache when the codec and episodes match.

    With ``phases``, only steps ``t mod stride == phases[e]`` are encoded (the others stay zero; the
    windows never read them). ``episodes`` may come without frames (``load_episodes(images=False)``);
    they are decoded only on a cache miss.
    """
    h = hashlib.sha256()
    h.update(codec_file.read_bytes())
    h.update(str(Path(data_root).resolve()).encode())
    h.update(np.array([ep.index for ep in episodes] + [len(ep.frames) for ep in episodes]).tobytes())
    h.update(np.array([stride] + list(phases or [])).tobytes())
    path = cache_dir / f"{h.hexdigest()[:20]}.safetensors"
    lengths = [len(ep.frames) for ep in episodes]
    if path.is_file():
        flat = load_file(str(path))["latents"]
        if len(flat) == sum(lengths):
            return list(flat.split(lengths))
    codec = codec.to(device).eval()
    dataset = EpisodeDataset(data_root)
    parts = []
    for e, ep in enumerate(tqdm(episodes, desc="encode", disable=not progress, leave=False)):
        frames = ep.frames
        if frames.shape[2] == 0:
            frames = load_episodes(dataset, [ep.index], codec.config.image_size, progress=False)[0].frames
        parts.append(encode_phase(codec, frames, device, stride, phases[e] if phases is not None else None))
    _write_atomic(path, lambda tmp: save_file({"latents": torch.cat(parts).contiguous()}, tmp))
    return parts


@dataclass
class LatentWindows:
    """All windows of a set of episodes; ``gather`` returns a batch on ``device``."""

    latents: torch.Tensor  # (N_rows, C, V*h, w) float16
    actions: torch.Tensor  # (N_rows, 7) normalised float32
    index: dict[str, torch.Tensor]

    @classmethod
    def build(
        cls,
        latents: list[torch.Tensor],
        actions: list[torch.Tensor],
        history: int,
        horizon: int,
        stride: int,
        phases: list[int] | None = None,
    ) -> LatentWindows:
        lengths = [len(z) for z in latents]
        index = window_indices(lengths, history, horizon, stride, phases)
        return cls(torch.cat(latents), torch.cat(actions).float(), index)

    def __len__(self) -> int:
        return len(self.index["episode"])

    @classmethod
    def concat(cls, parts: list[LatentWindows]) -> LatentWindows:
        """One set of windows over several (e.g. from several datasets); rows and episodes are renumbered."""
        rows, episodes = 0, 0
        index: dict[str, list[torch.Tensor]] = {k: [] for k in ("history", "future", "action", "episode")}
        for w in parts:
            for k in ("history", "future", "action"):
                index[k].append(w.index[k] + rows)
            index["episode"].append(w.index["episode"] + episodes)
            rows += len(w.latents)
            episodes += int(w.index["episode"].max()) + 1 if len(w) else 0
        return cls(
            torch.cat([w.latents for w in parts]),
            torch.cat([w.actions for w in parts]),
            {k: torch.cat(v) for k, v in index.items()},
        )

    def gather(self, idx: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(history (B, T, C, h, w), actions (B, H, 7), future (B, H, C, h, w)) for window indices ``idx``."""
        hist = self.latents[self.index["history"][idx]].to(device).float()
        fut = self.latents[self.index["future"][idx]].to(device).float()
        act = self.actions[self.index["action"][idx]].to(device)
        return hist, act, fut

    def repeat(self, k: int) -> LatentWindows:
        """Every window ``k`` times (the index repeated, the latents shared): a larger share of uniform batches."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return LatentWindows(
            self.latents, self.actions, {key: v.repeat(k, *([1] * (v.dim() - 1))) for key, v in self.index.items()}
        )

    def spread(self, n: int) -> torch.Tensor:
        """``n`` window indices spread evenly over all windows (deterministic evaluation sets)."""
        return torch.linspace(0, len(self) - 1, min(n, len(self))).long()


def branch_windows(
    codec: Codec,
    codec_file: Path,
    files: list[Path],
    cache_dir: Path,
    device: torch.device,
    normalize,
    history: int,
    horizon: int,
    progress: bool = True,
) -> LatentWindows:
    """World-model windows of branch shards (:mod:`vidplan_server.data.branches`): one window per branch, its
    T recorded history frames, its H rendered future frames and its H knot actions (normalised with
    ``normalize``, the world model's action statistics). Latents are cached like :func:`cached_latents`."""
    from vidplan_server.data.branches import read_branches

    h = hashlib.sha256()
    h.update(codec_file.read_bytes())
    for f in files:
        h.update(f"{Path(f).resolve()}:{Path(f).stat().st_size}".encode())
    path = cache_dir / f"branches-{h.hexdigest()[:20]}.safetensors"
    frames, knots = read_branches(files)
    N, L = frames.shape[:2]
    if L != history + horizon or knots.shape[1] != horizon:
        raise DatasetError(
            f"branches hold {L} frames and {knots.shape[1]} actions per branch, the world model "
            f"needs {history} + {horizon}: record them with a bundle of the same history and horizon"
        )
    if path.is_file():
        latents = load_file(str(path))["latents"]
    else:
        flat = frames.reshape(N * L, *frames.shape[2:])
        parts = [
            encode_frames(codec.to(device).eval(), flat[i : i + 512], device)
            for i in tqdm(range(0, len(flat), 512), desc="encode branches", disable=not progress, leave=False)
        ]
        latents = torch.cat(parts)
        _write_atomic(path, lambda tmp: save_file({"latents": latents.contiguous()}, tmp))
    rows = torch.arange(N)[:, None] * L
    future = rows + history + torch.arange(horizon)[None]
    actions = torch.zeros((N * L, knots.shape[-1]), dtype=torch.float32)
    actions[future.reshape(-1)] = normalize(torch.from_numpy(knots).reshape(-1, knots.shape[-1])).float()
    index = {
        "history": rows + torch.arange(history)[None],
        "future": future,
        "action": future,
        "episode": torch.arange(N),
    }
    return LatentWindows(latents, actions, index)
