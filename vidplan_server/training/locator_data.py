"""What the target locator (``locator``, :class:`~vidplan_server.models.progress.TargetLocator`) trains on.

A sample is (current frame, object j): the frame's normalised codec latents, the semantic encoder's relevance map of
an instruction naming object j over that frame, and object j's position (m, robot base frame). Two sources:

- **robot recordings** (:meth:`LocatorData.from_progress`, ``vidplan train locator --data DIR``): the anchor frames
  of the world model's ``train``-split training windows, with the maps over the codec's round trip of their latents
  (``map_source`` "codec");
- **captioned renders** (:func:`caption_locator_data`, ``vidplan train locator --captions DIR``: ``vidplan sim
  captions`` folders, no robot actions): one sample per rendered image and object, with an instruction of the task
  forms ("put the <colour> <object> in the <container>" / "pick up the <colour> <object>",
  :func:`~vidplan_server.sim.tasks.task_instruction`) and the maps over the rendered frames themselves
  (``map_source`` "frames": the planner then computes them over the request's frames).

Decided, with the measurements in the model card: the bundled locator trains on captioned renders alone and reads
the maps over the frames. Trained on the 270 ``train`` episodes it over-fitted them (training error ~2 cm,
held-out 7.6 cm), and on ``ood`` scenes its point was a median 8.4 cm from the instructed object and nearer another
object in 59 % of frames, which made the planner's progress term (``planning/objective.py``) pull toward the wrong
object. Two causes, measured: the scenes (with 12 k renders added to the episodes, still through the codec's round
trip, ``val`` went to 3.8 cm and 80 % nearest, ``ood`` only to 7.7 cm and 45 %), and the round trip itself (the map's
peak lands inside the instructed object in 55-60 % of ``ood`` exterior views through it, 85-90 % on the frames).
The renders are thousands of scenes with 1-6 objects of every split's objects and colours: the same kind of data,
and the same split, as the semantic encoder's (the stand-in for an internet-scale CLIP and for the grounding models
built on such data). The policy, the world model, the UQ head and the value head still never see an ``ood`` object.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from vidplan_server.data.errors import DatasetError
from vidplan_server.models.checkpoint import _write_atomic
from vidplan_server.models.codec import Codec
from vidplan_server.models.progress import frame_target_maps, target_maps
from vidplan_server.models.semantic_backend import SemanticBackend
from vidplan_server.sim.captions import CaptionSet
from vidplan_server.sim.tasks import task_instruction
from vidplan_server.training.progress_stage import ProgressData

PLACE_FRACTION = 0.7  # share of "put ... in ..." instructions, as sample_task draws tasks
# Where an object can be, m in the base frame (x, y, z ranges): the table and the arm's reach above it. A render's
# object outside it was thrown off the table by the physics of a reset (3 of 42 k objects of 12 k renders, one of
# them at z = -1e30) and is not a sample.
PLAUSIBLE = ((0.0, 1.0), (-0.6, 0.6), (-0.05, 0.6))


@dataclass
class LocatorData:
    """Current frames, with one target map and one position per (frame, object)."""

    latents: torch.Tensor  # (N, C, V*h, w) float16 normalised codec latents
    maps: torch.Tensor  # (N, J, V*h, w) float16 target maps in [0, 1]
    valid: torch.Tensor  # (N, J) bool: object j exists and an instruction names it
    positions: torch.Tensor  # (N, J, 3) float32 m, robot base frame, NaN where object j does not exist

    def __len__(self) -> int:
        return len(self.latents)

    @classmethod
    def from_progress(cls, data: ProgressData) -> LocatorData:
        """The anchor frame ("now") of every window of the progress head's data."""
        rows = data.windows.index["history"][:, -1]
        return cls(data.windows.latents[rows], data.maps, data.valid, data.positions[rows])


def split_renders(data: LocatorData, images_per_shard: int, every: int = 20) -> tuple[LocatorData, LocatorData]:
    """(training, held-out): every ``every``-th shard of renders is held out (a shard's images share scenes, no
    scene crosses shards), or the last shard when there are fewer than ``every``."""
    shard = torch.arange(len(data)) // images_per_shard
    shards = int(shard.max()) + 1
    held = shard % every == every - 1 if shards >= every else shard == shards - 1
    if shards < 2:
        raise DatasetError("the renders hold one shard only: nothing to hold out (render more images)")

    def part(mask: torch.Tensor) -> LocatorData:
        return LocatorData(data.latents[mask], data.maps[mask], data.valid[mask], data.positions[mask])

    return part(~held), part(held)


def plausible(positions: torch.Tensor) -> torch.Tensor:
    """(..., 3) positions in metres -> (...) bool: finite and inside :data:`PLAUSIBLE`."""
    ok = torch.isfinite(positions).all(-1)
    for axis, (lo, hi) in enumerate(PLAUSIBLE):
        ok &= (positions[..., axis] >= lo) & (positions[..., axis] <= hi)
    return ok


def caption_instructions(captions: CaptionSet, seed: int = 0) -> list[list[str]]:
    """Per image, one instruction per object (entities order), of a task kind drawn with ``PLACE_FRACTION``."""
    rng = np.random.default_rng(seed)
    out = []
    for ents in captions.entities:
        container = next((e.noun for e in ents if e.kind == "container"), "bowl")
        objects = [e for e in ents if e.kind == "object"]
        kinds = np.where(rng.random(len(objects)) < PLACE_FRACTION, "place", "pick")
        out.append(
            [task_instruction(str(k), f"{e.colour} {e.noun}", container) for k, e in zip(kinds, objects, strict=True)]
        )
    return out


@torch.no_grad()
def caption_locator_data(
    captions: CaptionSet,
    codec: Codec,
    semantic: SemanticBackend,
    device: torch.device,
    seed: int = 0,
    batch: int = 64,
    progress: bool = True,
    map_source: str = "frames",
) -> LocatorData:
    """Every image of ``captions`` (which must hold positions: folders rendered since they are stored) encoded by
    ``codec``, with every object's target map from ``semantic`` and position. ``map_source``
    (:class:`~vidplan_server.models.progress.LocatorConfig`): the maps over the rendered frames ("frames") or over
    the codec's round trip of their latents ("codec"), as the planner will compute them for this locator."""
    if captions.positions is None:
        raise DatasetError(
            "these captioned renders hold no object positions (rendered before they were stored); render a new "
            "folder with `vidplan sim captions --out DIR --images N`"
        )
    texts = caption_instructions(captions, seed)
    J = captions.positions.shape[1]
    unique = sorted({t for row in texts for t in row})
    emb = semantic.encode_text(unique).float()
    text_id = {t: i for i, t in enumerate(unique)}
    codec = codec.to(device).eval()
    latents, maps = [], []
    valid = torch.zeros((len(captions), J), dtype=torch.bool)
    for start in tqdm(range(0, len(captions), batch), desc="locator renders", disable=not progress, leave=False):
        images = captions.images[start : start + batch]  # (B, V, H, W, 3) uint8
        if images.shape[2:4] != tuple(codec.config.image_size):
            size = codec.config.image_size[::-1]
            images = np.stack([[cv2.resize(v, size, interpolation=cv2.INTER_AREA) for v in im] for im in images])
        frames = torch.from_numpy(images).to(device).permute(0, 1, 4, 2, 3).float() / 255.0  # (B, V, 3, H, W)
        z = codec.encode(frames)  # (B, C, V*h, w)
        m = torch.zeros((len(z), J, *z.shape[-2:]))
        for j in range(J):
            rows = [k for k in range(len(z)) if j < len(texts[start + k])]
            if rows:
                text = emb[[text_id[texts[start + k][j]] for k in rows]].to(device)
                if map_source == "frames":
                    raw = captions.images[start : start + batch][rows]
                    m[rows, j] = frame_target_maps(semantic, raw, text, z.shape[-2:]).cpu()
                else:
                    m[rows, j] = target_maps(codec, semantic, z[rows], text).cpu()
                valid[[start + k for k in rows], j] = True
        latents.append(z.half().cpu())
        maps.append(m.half())
    positions = torch.from_numpy(captions.positions).float()
    return LocatorData(torch.cat(latents), torch.cat(maps), valid & plausible(positions), positions)


def cached_caption_locator_data(
    captions: CaptionSet,
    codec: Codec,
    semantic: SemanticBackend,
    device: torch.device,
    cache_dir: Path,
    model_files: tuple[Path, ...],
    progress: bool = True,
    map_source: str = "frames",
) -> LocatorData:
    """:func:`caption_locator_data`, cached in ``cache_dir`` by the codec and semantic weights and the renders
    (minutes on CPU: an encode, a decode and a semantic pass per image and object)."""
    h = hashlib.sha256()
    for f in model_files:
        h.update(Path(f).read_bytes())
    h.update(captions.images[:: max(1, len(captions) // 64)].tobytes())
    h.update(np.nan_to_num(captions.positions).tobytes() if captions.positions is not None else b"")
    h.update(map_source.encode())
    path = cache_dir / f"captions_{h.hexdigest()[:20]}.safetensors"
    if path.is_file():
        t = load_file(str(path))
        return LocatorData(t["latents"], t["maps"], t["valid"] & plausible(t["positions"]), t["positions"])
    data = caption_locator_data(captions, codec, semantic, device, progress=progress, map_source=map_source)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: getattr(data, k).contiguous() for k in ("latents", "maps", "valid", "positions")}
    _write_atomic(path, lambda tmp: save_file(tensors, tmp))
    return data
