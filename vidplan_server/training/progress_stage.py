"""Stage for the progress head (``progress``, :mod:`vidplan_server.models.progress`).

Data: the world model's training windows of the ``train`` split's recordings (the same encoded latents, the same
phase subsampling), plus each episode's simulator ground truth (object names and poses, which object the
instruction names). For every window, its anchor frame (the last history frame, "now") is decoded and, for every
object of the scene, the semantic encoder's relevance map of an instruction naming that object is computed: the
episode's own instruction for its target, the instruction rewritten with the other object's name for the others
(:func:`~vidplan_server.data.instructions.distractor_instruction`). So the head learns to follow the map, not the
data's habit of approaching whatever the episode's target was.

A sample is (window, object j, m in 0..H): the latent of frame m of the window (m = 0: the anchor itself; m >= 1:
future frame m, i.e. ``m * stride`` control steps ahead) and object j's target map; its label is the distance in
metres between the recorded ``cartesian_position`` at that frame and object j's recorded position (the quantity the
planning-signal diagnostic ranks proposals by). Decided, as for the value head: a ``predicted_fraction`` of every
batch (default half) replaces the true future latents by the flow map's no-grad prediction from the window's
history and recorded actions, because at planning time the head only reads predicted frames. Loss: L1 on the
distance (robust to the few frames where the object is hidden and the map is wrong).

Evaluation (held-out episodes): mean absolute error on true and on predicted frames, and the ranking the planner
needs -- the Spearman correlation, within a window, of the predicted and the true distance over the H future frames
and all objects, averaged over windows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from vidplan_server.data.instructions import distractor_instruction
from vidplan_server.data.windows import LatentWindows
from vidplan_server.models.checkpoint import _write_atomic, save_module
from vidplan_server.models.codec import Codec
from vidplan_server.models.flow_map import FlowMap
from vidplan_server.models.progress import (
    LocatorConfig,
    ProgressHead,
    ProgressHeadConfig,
    TargetLocator,
    relevance_maps,
)
from vidplan_server.models.semantic_backend import SemanticBackend
from vidplan_server.training.head_stages import FrozenFlowMap
from vidplan_server.training.loop import Stage

if TYPE_CHECKING:
    from vidplan_server.training.locator_data import LocatorData

EVAL_WINDOWS = 192


@dataclass
class ProgressData:
    """Windows with one target map per (window, object) and every object's place relative to every latent row."""

    windows: LatentWindows
    maps: torch.Tensor  # (N_windows, J, V*h, w) float16 target maps at each window's anchor
    valid: torch.Tensor  # (N_windows, J) bool: object j exists and an instruction could name it
    distance: torch.Tensor  # (N_rows, J) float32 metres from the hand, NaN where object j does not exist
    positions: torch.Tensor  # (N_rows, J, 3) float32 metres, robot base frame, NaN where object j does not exist

    @classmethod
    def concat(cls, parts: list[ProgressData]) -> ProgressData:
        """One set over several datasets (windows renumbered as :meth:`LatentWindows.concat`); scenes with fewer
        objects are padded to the most objects of any part (invalid maps, NaN geometry)."""
        J = max(p.valid.shape[1] for p in parts)

        def pad(t: torch.Tensor, value) -> torch.Tensor:
            extra = J - t.shape[1]
            return t if extra == 0 else torch.cat([t, t.new_full((t.shape[0], extra, *t.shape[2:]), value)], 1)

        return cls(
            LatentWindows.concat([p.windows for p in parts]),
            torch.cat([pad(p.maps, 0) for p in parts]),
            torch.cat([pad(p.valid, False) for p in parts]),
            torch.cat([pad(p.distance, float("nan")) for p in parts]),
            torch.cat([pad(p.positions, float("nan")) for p in parts]),
        )

    def rows(self, idx: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Latent row of frame m (0 = anchor, 1..H = future) of windows ``idx``."""
        anchor = self.windows.index["history"][idx, -1]
        future = self.windows.index["future"][idx, (m - 1).clamp_min(0)]
        return torch.where(m == 0, anchor, future)


def object_geometry(episodes: list, row_offsets: list[int], n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance (N_rows, J) of the hand to every object, positions (N_rows, J, 3) of every object), NaN-padded.

    ``episodes``: per window-episode (in ``windows.index['episode']`` order) an object with ``instruction``,
    ``cartesian_position`` (T, 6) and ``ground_truth`` (object names, target index, object poses (T, n, 7));
    ``row_offsets``: the first latent row of each episode."""
    J = max(len(ep.ground_truth.object_names) for ep in episodes)
    distance = torch.full((n_rows, J), float("nan"))
    positions = torch.full((n_rows, J, 3), float("nan"))
    for ep, start in zip(episodes, row_offsets, strict=True):
        objects = np.array(ep.ground_truth.object_poses, dtype=np.float32)[:, :, :3]
        tcp = np.asarray(ep.cartesian_position)[:, :3]
        n = objects.shape[1]
        distance[start : start + len(tcp), :n] = torch.from_numpy(np.linalg.norm(tcp[:, None] - objects, axis=-1))
        positions[start : start + len(tcp), :n] = torch.from_numpy(objects).float()
    return distance, positions


@torch.no_grad()
def build_target_maps(
    windows: LatentWindows,
    episodes: list,
    codec: Codec,
    semantic: SemanticBackend,
    device: torch.device,
    progress: bool = True,
    batch: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(maps (N_windows, J, V*h, w) float16, valid (N_windows, J)): per window's anchor frame and object, the
    relevance of an instruction naming that object (``episodes`` as in :func:`object_geometry`)."""
    J = max(len(ep.ground_truth.object_names) for ep in episodes)
    texts: list[list[str | None]] = []
    for ep in episodes:
        gt = ep.ground_truth
        names, t = list(gt.object_names), gt.target_index
        row = [
            ep.instruction if j == t else distractor_instruction(ep.instruction, names, t, j) for j in range(len(names))
        ]
        texts.append(row + [None] * (J - len(row)))
    unique = sorted({t for row in texts for t in row if t is not None})
    emb = semantic.encode_text(unique).float()
    text_id = {t: i for i, t in enumerate(unique)}
    N = len(windows)
    Vh, w = windows.latents.shape[-2:]
    maps = torch.zeros((N, J, Vh, w), dtype=torch.float16)
    valid = torch.zeros((N, J), dtype=torch.bool)
    episode_of = windows.index["episode"]
    codec = codec.to(device).eval()
    for start in tqdm(range(0, N, batch), desc="target maps", disable=not progress, leave=False):
        idx = torch.arange(start, min(N, start + batch))
        anchors = windows.latents[windows.index["history"][idx, -1]].to(device).float()
        frames = codec.decode(anchors).clamp(0.0, 1.0)  # (B, V, 3, H, W)
        for j in range(J):
            names = [texts[int(e)][j] for e in episode_of[idx]]
            ok = torch.tensor([t is not None for t in names])
            if not ok.any():
                continue
            rows = emb[[text_id[t] if t is not None else 0 for t in names]].to(device)
            maps[idx, j] = relevance_maps(semantic, frames, rows, (Vh, w)).half().cpu()
            valid[idx, j] = ok
    return maps, valid


def build_progress_data(
    windows: LatentWindows,
    episodes: list,
    row_offsets: list[int],
    codec: Codec,
    semantic: SemanticBackend,
    device: torch.device,
    progress: bool = True,
    cache_dir: Path | None = None,
    model_files: tuple[Path, ...] = (),
) -> ProgressData:
    """The maps (from ``cache_dir`` when the codec and semantic weights ``model_files`` and the windows match: they
    take minutes on CPU, a decode and a semantic pass per window and object) and the objects' geometry."""
    distance, positions = object_geometry(episodes, row_offsets, len(windows.latents))
    path = None
    if cache_dir is not None:
        h = hashlib.sha256()
        for f in model_files:
            h.update(Path(f).read_bytes())
        for key in ("history", "future", "episode"):
            h.update(windows.index[key].numpy().tobytes())
        h.update(windows.latents[:: max(1, len(windows.latents) // 64)].float().numpy().tobytes())
        path = cache_dir / f"{h.hexdigest()[:20]}.safetensors"
    if path is not None and path.is_file():
        t = load_file(str(path))
        maps, valid = t["maps"], t["valid"]
    else:
        maps, valid = build_target_maps(windows, episodes, codec, semantic, device, progress)
        if path is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            tensors = {"maps": maps.contiguous(), "valid": valid.contiguous()}
            _write_atomic(path, lambda tmp: save_file(tensors, tmp))
    return ProgressData(windows, maps, valid, distance, positions)


class ProgressStage(Stage):
    name = "progress"

    def __init__(
        self,
        config: ProgressHeadConfig,
        flow_map: FlowMap | None,
        flow_steps: int,
        train: ProgressData,
        held_out: ProgressData,
        predicted_fraction: float = 0.5,
    ) -> None:
        self.config = config
        self.model = ProgressHead(config)
        self.flow = FrozenFlowMap(flow_map, flow_steps) if flow_map is not None else None
        self.train_set = train
        self.held_out = held_out
        self.predicted_fraction = predicted_fraction if flow_map is not None else 0.0
        self.horizon = train.windows.index["future"].shape[1]

    def _predict(self, data: ProgressData, idx: torch.Tensor, device, generator) -> torch.Tensor:
        """Flow-map prediction (B, H, C, V*h, w) of windows ``idx`` from their history and recorded actions."""
        hist, act, _ = data.windows.gather(idx, device)
        return self.flow.sample(hist, act, generator)

    def _samples(self, data: ProgressData, n: int, generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(window, object, frame m) of ``n`` random valid samples."""
        pairs = data.valid.nonzero()
        pick = pairs[torch.randint(len(pairs), (n,), generator=generator)]
        m = torch.randint(0, self.horizon + 1, (n,), generator=generator)
        return pick[:, 0], pick[:, 1], m

    def _inputs(self, data, idx, obj, m, device, n_pred: int, generator):
        rows = data.rows(idx, m)
        latents = data.windows.latents[rows].to(device).float()
        if n_pred:
            mp = m[:n_pred].clamp_min(1)  # a predicted sample is a future frame
            pred = self._predict(data, idx[:n_pred], device, generator)
            latents[:n_pred] = pred[torch.arange(n_pred), (mp - 1).to(device)]
            rows = torch.cat([data.rows(idx[:n_pred], mp), rows[n_pred:]])
        maps = data.maps[idx, obj].to(device).float()
        labels = data.distance[rows, obj].to(device)
        return latents, maps, labels

    def batch(self, generator, batch_size, device):
        idx, obj, m = self._samples(self.train_set, batch_size, generator)
        n_pred = int(round(batch_size * self.predicted_fraction))
        return self._inputs(self.train_set, idx, obj, m, device, n_pred, generator)

    def loss(self, model: ProgressHead, batch, generator):
        latents, maps, labels = batch
        pred = model(latents, maps)
        return (pred - labels).abs().mean(), {}

    @torch.no_grad()
    def evaluate(self, model: ProgressHead, device):
        from scipy.stats import spearmanr

        data = self.held_out
        g = torch.Generator().manual_seed(0)
        windows = data.windows.spread(EVAL_WINDOWS)
        H = self.horizon
        mae = {"true": [], "pred": []}
        rhos = []
        for w in windows.split(16):
            pairs = data.valid[w].nonzero()
            idx, obj = w[pairs[:, 0]], pairs[:, 1]
            n = len(idx)
            idx_r, obj_r = idx.repeat_interleave(H), obj.repeat_interleave(H)
            m = torch.arange(1, H + 1).repeat(n)
            rows = data.rows(idx_r, m)
            maps = data.maps[idx_r, obj_r].to(device).float()
            labels = data.distance[rows, obj_r]
            true_d = model(data.windows.latents[rows].to(device).float(), maps).cpu()
            mae["true"].append((true_d - labels).abs())
            if self.flow is not None:
                pred = self._predict(data, w, device, g)  # (len(w), H, ...)
                where = {int(x): i for i, x in enumerate(w)}
                lat = pred[[where[int(x)] for x in idx_r], (m - 1).to(device)]
                pred_d = model(lat, maps).cpu()
                mae["pred"].append((pred_d - labels).abs())
            else:
                pred_d = true_d
            for k in w.tolist():  # ranking within one window: all its future frames and objects
                sel = idx_r == k
                if sel.sum() > 2 and np.ptp(labels[sel].numpy()) > 1e-6:
                    rho = spearmanr(pred_d[sel].numpy(), labels[sel].numpy()).statistic
                    if np.isfinite(rho):
                        rhos.append(rho)
        out = {"mae_true_m": float(torch.cat(mae["true"]).mean())}
        if mae["pred"]:
            out["mae_pred_m"] = float(torch.cat(mae["pred"]).mean())
        out["spearman_in_window"] = float(np.mean(rhos)) if rhos else 0.0
        return out

    def export(self, model, ckpt: Path, meta: dict) -> None:
        save_module(ckpt, "progress", model, self.config, meta)


class LocatorStage(Stage):
    """The target locator (``locator``): where is the object the map highlights, from the current frame.

    Data: :class:`~vidplan_server.training.locator_data.LocatorData` (the robot recordings' anchor frames, at
    planning time the current frame is observed, not predicted; and captioned renders). A sample is (frame, object
    j): the frame's latents and object j's target map; the label is object j's position at that frame. Loss: L1 on
    the position (m). Evaluation: mean position error, and how often the predicted position is nearer to object j
    than to every other object of the scene (what the planner needs to tell the instructed object from the others).
    """

    name = "locator"

    def __init__(self, config: LocatorConfig, train: LocatorData, held_out: LocatorData) -> None:
        self.config = config
        self.model = TargetLocator(config)
        self.train_set = train
        self.held_out = held_out

    @staticmethod
    def _inputs(data: LocatorData, idx: torch.Tensor, obj: torch.Tensor, device):
        latents = data.latents[idx].to(device).float()
        return latents, data.maps[idx, obj].to(device).float(), data.positions[idx, obj].to(device)

    def batch(self, generator, batch_size, device):
        pairs = self.train_set.valid.nonzero()
        pick = pairs[torch.randint(len(pairs), (batch_size,), generator=generator)]
        return self._inputs(self.train_set, pick[:, 0], pick[:, 1], device)

    def loss(self, model: TargetLocator, batch, generator):
        latents, maps, positions = batch
        return (model(latents, maps) - positions).abs().sum(-1).mean(), {}

    @torch.no_grad()
    def evaluate(self, model: TargetLocator, device):
        data = self.held_out
        frames = torch.linspace(0, len(data) - 1, min(len(data), 4 * EVAL_WINDOWS)).long()  # as windows.spread
        pairs = data.valid[frames].nonzero()
        idx, obj = frames[pairs[:, 0]], pairs[:, 1]
        errors, nearest = [], []
        for part in torch.arange(len(idx)).split(128):
            latents, maps, truth = self._inputs(data, idx[part], obj[part], device)
            pred = model(latents, maps).cpu()
            errors.append((pred - truth.cpu()).norm(dim=-1))
            others = (pred[:, None] - data.positions[idx[part]]).norm(dim=-1)  # (B, J), NaN for missing objects
            nearest.append(others.nan_to_num(float("inf")).argmin(-1) == obj[part])
        return {
            "position_error_m": float(torch.cat(errors).mean()),
            "nearest_object_rate": float(torch.cat(nearest).float().mean()),
        }

    def export(self, model, ckpt: Path, meta: dict) -> None:
        save_module(ckpt, "locator", model, self.config, meta)
