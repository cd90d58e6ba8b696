"""Semantic encoder on captioned renders (``vidplan train semantic --captions DIR``): the CLIP stand-in.

Data: the single views of ``vidplan sim captions`` images (every object and colour of the simulator, see
:mod:`vidplan_server.sim.captions`), optionally mixed with ``train``-split robot frames and their
instruction (``robot_share`` of every batch). Every rendered view gets ``captions_per_view`` captions
(:func:`~vidplan_server.sim.caption_text.sample_caption`) of entities visible in it (at least
``min_visible_px`` pixels; a view showing none gets captions of hidden entities, whose masks are empty).

Loss, per batch of B views and C captions:

- frame InfoNCE (CLIP's, symmetric): a view and a caption are a positive pair when the caption's referent
  is visible in the view, whichever image the caption was drawn for (several positives -> soft targets);
- dense term: per-patch binary cross-entropy of ``sigmoid(a cos(patch, text) + b)`` against the referent's
  coverage of the 16 x 16 patch grid, balanced per caption (:func:`dense_weights`), with the patches of
  *other* entities of the same image (the hard negatives: "the red cube" must not light up the red duck
  beside it) weighted ``hard_negative_weight`` times more than the table;
- localisation term (:func:`localisation_loss`): the softmax of the dense logits over the grid against the
  referent's coverage, so the map's peak, which the relevance centroid follows, sits on the referent;
- region InfoNCE: the referent-weighted mean patch embedding of every visible entity against the
  "<colour> <noun>" descriptions of all entities of its image, again the hard negatives.

Decided, measured: with the dense term balanced over the whole batch (as the robot-frame stage does) and no
localisation term, large referents (the tray in the wrist view) outweighed the 2-6 pixel objects of the
exterior views, and the relevance centroid landed in the target of 0.85 of visible ``val`` and 0.71 of
``ood`` frames (2500 of 4000 steps); with per-caption balance and the localisation term, 0.91 and 0.75
after 1000 steps. The two changes were made together and not measured apart.

Codec augmentation: the planner scores frames the codec decoded, and small objects blur away in the round
trip (the robot-frame encoder's centroid hits fell from 0.77 to 0.45 through it). ``codec_fraction`` of
the rendered views are passed through the bundle's codec once (encode + decode, cached in
``<ckpt>/training/semantic_codec/``) and ``codec_share`` of every batch is drawn from those round trips.
The other rendered views get the blur of the robot-frame stage on half of them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from vidplan_server.data.schema import CAMERA_NAMES
from vidplan_server.models.checkpoint import _write_atomic, save_module
from vidplan_server.models.codec import Codec
from vidplan_server.models.semantic import SemanticConfig, SimDualEncoder
from vidplan_server.sim.assets import (
    CONTAINER_COLOURS,
    CONTAINERS,
    OOD_COLOURS,
    OOD_OBJECTS,
    TRAIN_COLOURS,
    TRAIN_OBJECTS,
)
from vidplan_server.sim.caption_text import (
    Entity,
    description,
    is_novel_entity,
    sample_caption,
)
from vidplan_server.sim.captions import CaptionSet
from vidplan_server.training.head_stages import SemanticFrames, centroid_hits, gaussian_blur
from vidplan_server.training.loop import Stage

MAX_ENTITIES = 8  # labels 1..7: up to 6 objects and the container (label 0: nothing)
# integer ids of every colour, noun and kind, to match captions and entities as arrays
_ID = {
    w: i
    for i, w in enumerate(
        sorted(
            {o.name for o in TRAIN_OBJECTS + OOD_OBJECTS}
            | {c.name for c in CONTAINERS}
            | {*TRAIN_COLOURS, *OOD_COLOURS, *CONTAINER_COLOURS}
            | {"object", "container"}
        )
    )
}


@dataclass(frozen=True)
class CaptionTrainConfig:
    captions_per_view: int = 2
    robot_share: float = 0.25  # share of a batch drawn from robot frames (0 without robot data)
    codec_share: float = 0.35  # share of a batch drawn from codec round trips of rendered views
    codec_fraction: float = 0.3  # share of the rendered training views passed through the codec once
    min_visible_px: int = 4  # an entity counts as visible in a view from this many pixels (as in eval reward)
    dense_weight: float = 2.0
    region_weight: float = 0.5
    hard_negative_weight: float = 3.0
    localise_weight: float = 1.0
    eval_pairs: int = 768  # held-out (view, visible object) pairs scored by evaluate
    eval_images: int = 256  # held-out images (three views each) kept for evaluate, all with their codec round trip


@dataclass
class CaptionViews:
    """Single rendered views: images (M, H, W, 3) uint8, labels (M, H, W) uint8 (entity index + 1), the view's
    camera (M,), its image's entities, per-entity pixel counts (M, MAX_ENTITIES) (index = label), and codec
    round trips (M, H, W, 3) uint8 of the views where ``has_codec`` (M,) is set."""

    images: np.ndarray
    labels: np.ndarray
    camera: np.ndarray
    entities: list[list[Entity]]
    pixels: np.ndarray
    attrs: np.ndarray  # (M, MAX_ENTITIES - 1, 3) ids of colour, noun, kind per entity slot (-1: no entity)
    codec: np.ndarray | None = None
    has_codec: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)

    @staticmethod
    def from_captions(data: CaptionSet, images: list[int] | np.ndarray) -> CaptionViews:
        idx = np.asarray(images, dtype=int)
        V = data.images.shape[1]
        lab = data.labels[idx].reshape(-1, *data.labels.shape[2:])
        pixels = np.stack([np.bincount(x.ravel(), minlength=MAX_ENTITIES)[:MAX_ENTITIES] for x in lab])
        attrs = np.full((len(idx), MAX_ENTITIES - 1, 3), -1)
        for j, i in enumerate(idx):
            for k, e in enumerate(data.entities[i]):
                attrs[j, k] = _ID[e.colour], _ID[e.noun], _ID[e.kind]
        return CaptionViews(
            images=data.images[idx].reshape(-1, *data.images.shape[2:]),
            labels=lab,
            camera=np.tile(np.arange(V), len(idx)),
            entities=[data.entities[i] for i in idx for _ in range(V)],
            pixels=pixels,
            attrs=np.repeat(attrs, V, axis=0),
        )

    def visible(self, i: int, min_px: int) -> list[int]:
        """Indices of the entities of view ``i`` with at least ``min_px`` pixels."""
        return [k for k in range(len(self.entities[i])) if self.pixels[i, k + 1] >= min_px]


def split_images(data: CaptionSet, held_out_fraction: float) -> tuple[list[int], list[int]]:
    """(train, held-out) image indices: the held-out images are whole trailing shards, so no scene (which never
    crosses a shard) is on both sides. A single shard is used for both."""
    n, images_per_shard = len(data), data.images_per_shard
    shards = -(-n // images_per_shard)
    if shards <= 1:
        return list(range(n)), list(range(n))
    held = min(shards - 1, max(1, round(shards * held_out_fraction)))
    cut = (shards - held) * images_per_shard
    return list(range(cut)), list(range(cut, n))


@torch.no_grad()
def codec_round_trip(codec: Codec, images: np.ndarray, batch: int = 64, progress: bool = False) -> np.ndarray:
    """Images (N, H, W, 3) uint8 encoded and decoded by ``codec`` (posterior mean), as uint8.

    The codec is moved to channels_last, as the planner does: oneDNN's convolutions ran the round trip ~25 %
    faster that way on 2 CPU cores."""
    codec = codec.eval().to(memory_format=torch.channels_last)
    out = []
    for s in tqdm(range(0, len(images), batch), desc="codec round trip", disable=not progress, leave=False):
        x = torch.from_numpy(images[s : s + batch]).permute(0, 3, 1, 2).float() / 255.0
        z = codec.posterior(x.contiguous(memory_format=torch.channels_last)).mean
        y = codec.decode_raw(z.contiguous(memory_format=torch.channels_last)).clamp(0, 1)
        out.append((y * 255).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out) if out else images[:0].copy()


def attach_codec(
    views: CaptionViews,
    codec: Codec,
    codec_file: Path,
    fraction: float,
    cache_dir: Path,
    seed: int = 0,
    progress: bool = True,
) -> None:
    """Give ``fraction`` of the views (a seeded choice) their codec round trip, cached by codec and images."""
    chosen = np.random.default_rng(seed).random(len(views)) < fraction
    views.has_codec = chosen
    views.codec = np.zeros_like(views.images)
    if not chosen.any():
        return
    h = hashlib.sha256(codec_file.read_bytes())
    h.update(views.images[chosen][:: max(1, int(chosen.sum()) // 256)].tobytes())
    h.update(np.flatnonzero(chosen).tobytes())
    path = cache_dir / f"{h.hexdigest()[:20]}.safetensors"
    if path.is_file():
        trips = load_file(str(path))["images"].numpy()
    else:
        trips = codec_round_trip(codec, views.images[chosen], progress=progress)
        _write_atomic(path, lambda tmp: save_file({"images": torch.from_numpy(trips).contiguous()}, tmp))
    views.codec[chosen] = trips


def dense_weights(masks: torch.Tensor, others: torch.Tensor, hard_negative_weight: float) -> torch.Tensor:
    """Per-patch weights (C, g, g) of the dense term for referent coverages ``masks`` (C, g, g) and the coverage
    of the image's other entities ``others``: per caption, the referent's patches share a weight of 0.5 and
    the rest 0.5 (1 when the referent is hidden), other entities' patches ``hard_negative_weight`` times the
    table's. Balanced per caption, so a 3-pixel object in an exterior view counts as much as the tray filling
    the wrist view."""
    pos = (masks > 0).float()
    neg = (1 - pos) * torch.where(others > 0, hard_negative_weight, 1.0)
    n_pos = pos.flatten(1).sum(1)[:, None, None]
    n_neg = neg.flatten(1).sum(1)[:, None, None]
    return 0.5 * pos / n_pos.clamp(min=1) + (1 - 0.5 * (n_pos > 0).float()) * neg / n_neg.clamp(min=1e-6)


def localisation_loss(dense: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the softmax over the patch grid of dense logits (C, g, g) against the referent's
    normalised coverage ``masks`` (C, g, g): the peak of the relevance map, which the centroid follows, on the
    referent, whatever its size (0 for no captions)."""
    if not len(dense):
        return dense.sum() * 0.0
    target = masks.flatten(1) / masks.flatten(1).sum(1, keepdim=True).clamp(min=1e-6)
    return -(target * dense.flatten(1).log_softmax(1)).sum(1).mean()


def _grid_coverage(labels: torch.Tensor, grid: int) -> torch.Tensor:
    """labels (B, H, W) long -> (B, MAX_ENTITIES, grid, grid) share of each patch covered by each label."""
    onehot = F.one_hot(labels, MAX_ENTITIES).permute(0, 3, 1, 2).float()
    return F.adaptive_avg_pool2d(onehot, grid)


class CaptionSemanticStage(Stage):
    name = "semantic"

    def __init__(
        self,
        config: SemanticConfig,
        train: CaptionViews,
        held_out: CaptionViews,
        cfg: CaptionTrainConfig = CaptionTrainConfig(),
        robot: SemanticFrames | None = None,
        robot_held_out: SemanticFrames | None = None,
    ) -> None:
        self.config = config
        self.cfg = cfg
        self.model = SimDualEncoder(config)
        self.train_set, self.held_out = train, held_out
        self.robot, self.robot_held_out = robot, robot_held_out
        self.grid = config.image_size[0] // 4
        self.px_per_cell = config.image_size[0] * config.image_size[1] / self.grid**2
        self.codec_pool = np.flatnonzero(train.has_codec) if train.has_codec is not None else np.zeros(0, int)

    # ------------------------------------------------------------------ batches
    def batch(self, generator, batch_size, device):
        cfg = self.cfg
        rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
        n_robot = int(round(batch_size * cfg.robot_share)) if self.robot is not None else 0
        n_codec = int(round(batch_size * cfg.codec_share)) if len(self.codec_pool) else 0
        n_codec = min(n_codec, batch_size - n_robot)
        n_plain = batch_size - n_robot - n_codec
        data = self.train_set
        idx = np.concatenate(
            [self.codec_pool[rng.integers(len(self.codec_pool), size=n_codec)], rng.integers(len(data), size=n_plain)]
        ).astype(int)
        images = np.concatenate([data.codec[idx[:n_codec]], data.images[idx[n_codec:]]])
        img = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        # robot-frame stage augmentation on the plain renders: blur on half, a little gain on all
        sigma = torch.from_numpy(rng.random(len(idx)) * 1.5 * (rng.random(len(idx)) < 0.5)).float()
        sigma[:n_codec] = 0.0
        img = torch.where((sigma > 0)[:, None, None, None], gaussian_blur(img, sigma), img)
        img = img * torch.from_numpy(1.0 + 0.15 * (rng.random((len(idx), 1, 1, 1)) - 0.5)).float()
        captions, view_of = [], []
        for b, i in enumerate(idx):
            vis = data.visible(i, cfg.min_visible_px)
            pool = vis or list(range(len(data.entities[i])))
            for k in rng.choice(pool, size=cfg.captions_per_view, replace=len(pool) < cfg.captions_per_view):
                captions.append(sample_caption(data.entities[i], int(k), rng))
                view_of.append(b)
        view_of = np.array(view_of)
        # match[c, e]: caption c refers to entity label e of its own view; pos[b, c]: c's referent visible in b
        attrs = np.stack([data.attrs[i] for i in idx])  # (B, E, 3) colour, noun, kind ids (-1 = no entity)
        cap = np.array([[_ID.get(c.colour, -1), _ID.get(c.noun, -1), _ID[c.kind]] for c in captions])  # (C, 3)
        hit = (
            (attrs[:, None, :, 2] == cap[None, :, None, 2])
            & ((cap[None, :, None, 0] < 0) | (attrs[:, None, :, 0] == cap[None, :, None, 0]))
            & ((cap[None, :, None, 1] < 0) | (attrs[:, None, :, 1] == cap[None, :, None, 1]))
        )  # (B, C, E)
        visible = data.pixels[idx][:, 1:] >= cfg.min_visible_px  # (B, E)
        match = np.zeros((len(captions), MAX_ENTITIES), np.float32)
        match[:, 1:] = hit[view_of, np.arange(len(captions))]
        texts = [c.text for c in captions]
        pos = np.zeros((len(idx) + n_robot, len(captions) + n_robot), np.float32)
        pos[: len(idx), : len(captions)] = (hit & visible[:, None]).any(-1)
        batch = {
            "idx": idx,
            "img": img.clamp(0, 1).to(device),
            "labels": torch.from_numpy(data.labels[idx]).long().to(device),
            "view_of": torch.from_numpy(view_of).to(device),
            "match": torch.from_numpy(match).to(device),
        }
        if n_robot:
            r = rng.integers(len(self.robot.images), size=n_robot)
            rimg = torch.from_numpy(self.robot.images[r]).permute(0, 3, 1, 2).float() / 255.0
            rsig = torch.from_numpy(rng.random(n_robot) * 1.5 * (rng.random(n_robot) < 0.5)).float()
            rimg = torch.where((rsig > 0)[:, None, None, None], gaussian_blur(rimg, rsig), rimg)
            batch["robot_img"] = rimg.clamp(0, 1).to(device)
            masks = self.robot.masks[r].astype(np.float32)
            batch["robot_mask"] = torch.from_numpy(masks).to(device)
            rtext = [self.robot.instructions[t] for t in self.robot.text[r]]
            seen = masks.reshape(n_robot, -1).sum(1) * self.px_per_cell >= cfg.min_visible_px
            pos[len(idx) :, len(captions) :] = (np.array(rtext)[:, None] == np.array(rtext)[None]) & seen[:, None]
            texts += rtext
        # region term: every visible entity of a view with another entity against all descriptions of its image
        region, target, groups = [], [], []
        for b, i in enumerate(idx):
            ents = data.entities[i]
            if len(ents) < 2:
                continue
            descs = [description(e).text for e in ents]
            for k in np.flatnonzero(visible[b, : len(ents)]):
                region.append((b, k + 1))
                target.append(int(k))
                groups.append(descs)
        unique = sorted(set(texts) | {t for g in groups for t in g})
        where = {t: j for j, t in enumerate(unique)}
        col = np.full((len(groups), MAX_ENTITIES - 1), -1)
        for r_, g in enumerate(groups):
            col[r_, : len(g)] = [where[t] for t in g]
        batch.update(
            texts=unique,
            text_of=torch.tensor([where[t] for t in texts], device=device),
            pos=torch.from_numpy(pos).to(device),
            region=torch.tensor(region, dtype=torch.long).reshape(-1, 2),
            region_text=torch.from_numpy(col).to(device),
            region_target=torch.tensor(target, dtype=torch.long),
        )
        return batch

    # ------------------------------------------------------------------ loss
    def loss(self, model: SimDualEncoder, batch, generator):
        cfg = self.cfg
        img = batch["img"]
        B = len(img)
        n_robot = len(batch["robot_img"]) if "robot_img" in batch else 0
        if n_robot:
            img = torch.cat([img, batch["robot_img"]])
        glob, patches = model.encode_image(img)
        t_unique = model.encode_text(batch["texts"])
        t_all = t_unique[batch["text_of"]]  # (C + R, D)
        scale = model.logit_scale.exp().clamp(max=100.0)

        # frame InfoNCE with every visible referent as a positive
        logits = scale * glob @ t_all.T  # (B + R, C + R)
        pos = batch["pos"]
        rows, cols = pos.sum(1) > 0, pos.sum(0) > 0
        l_i2t = -(pos[rows] / pos[rows].sum(1, keepdim=True) * logits[rows].log_softmax(1)).sum(1).mean()
        l_t2i = -(pos[:, cols] / pos[:, cols].sum(0, keepdim=True) * logits[:, cols].log_softmax(0)).sum(0).mean()
        l_clip = 0.5 * (l_i2t + l_t2i)

        # dense term: referent masks and hard negatives (other entities of the image) on the patch grid
        cover = _grid_coverage(batch["labels"], self.grid)  # (B, E, g, g)
        vb = batch["view_of"]
        masks = torch.einsum("ce,cehw->chw", batch["match"], cover[vb])
        others = cover[vb][:, 1:].sum(1) - masks
        if n_robot:
            masks = torch.cat([masks, batch["robot_mask"]])
            others = torch.cat([others, torch.zeros_like(batch["robot_mask"])])
            vb = torch.cat([vb, torch.arange(B, B + n_robot, device=img.device)])
        dense = model.dense_logits(patches[vb], t_all)
        weight = dense_weights(masks, others, cfg.hard_negative_weight)
        bce = F.binary_cross_entropy_with_logits(dense, masks.clamp(0, 1), reduction="none")
        l_dense = (bce * weight).sum((1, 2)).mean()
        visible = masks.flatten(1).sum(1) * self.px_per_cell >= cfg.min_visible_px
        l_loc = localisation_loss(dense[visible], masks[visible])

        # region InfoNCE among the entities of the same image
        if len(batch["region"]):
            b_idx, e_idx = batch["region"][:, 0].to(img.device), batch["region"][:, 1].to(img.device)
            emb = F.normalize(torch.einsum("rhw,rdhw->rd", cover[b_idx, e_idx], patches[b_idx]), dim=-1)
            col = batch["region_text"]
            rl = (scale * emb @ t_unique.T).gather(1, col.clamp(min=0)).masked_fill(col < 0, float("-inf"))
            l_region = F.cross_entropy(rl, batch["region_target"].to(img.device))
        else:
            l_region = patches.sum() * 0.0
        loss = l_clip + cfg.dense_weight * l_dense + cfg.region_weight * l_region + cfg.localise_weight * l_loc
        return loss, {"clip": l_clip.item(), "dense": l_dense.item(), "region": l_region.item(), "loc": l_loc.item()}

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, model: SimDualEncoder, device):
        """Centroid hit rate of held-out renders ("pick up the <colour> <noun>" for every visible object), split
        into seen (train words) and novel (ood object or colour), raw and through the codec, wrist view alone;
        and on held-out robot frames with their instruction."""
        data, cfg = self.held_out, self.cfg
        pairs = [
            (i, k)
            for i in range(len(data))
            for k in data.visible(i, cfg.min_visible_px)
            if data.entities[i][k].kind == "object"
        ]
        pick = np.linspace(0, len(pairs) - 1, min(cfg.eval_pairs, len(pairs))).astype(int) if pairs else []
        pairs = [pairs[j] for j in pick]
        out: dict[str, float] = {}
        if pairs:
            vi = np.array([i for i, _ in pairs])
            ents = [data.entities[i][k] for i, k in pairs]
            texts = [f"pick up the {e.colour} {e.noun}" for e in ents]
            mask = torch.from_numpy(np.stack([data.labels[i] == k + 1 for i, k in pairs])).to(device)
            novel = np.array([is_novel_entity(e) for e in ents])
            wrist = data.camera[vi] == CAMERA_NAMES.index("wrist_image_left")
            kinds = [("raw", data.images)]
            if data.has_codec is not None and data.has_codec[vi].all():
                kinds.append(("codec", data.codec))
            for kind, source in kinds:
                hit = self._hits(model, source[vi], texts, mask, device)
                suffix = "" if kind == "raw" else "_codec"
                out[f"hit_seen{suffix}"] = float(hit[~novel].mean()) if (~novel).any() else float("nan")
                out[f"hit_novel{suffix}"] = float(hit[novel].mean()) if novel.any() else float("nan")
                out[f"hit_wrist{suffix}"] = float(hit[wrist].mean()) if wrist.any() else float("nan")
        if self.robot_held_out is not None:
            r = self.robot_held_out
            sel = np.linspace(0, len(r.images) - 1, min(256, len(r.images))).astype(int)
            visible = r.masks[sel].reshape(len(sel), -1).sum(1) * self.px_per_cell >= cfg.min_visible_px
            sel = sel[visible]
            if len(sel):
                mask = torch.from_numpy(r.masks[sel].astype(np.float32) > 0).to(device)
                hit = self._hits(model, r.images[sel], [r.instructions[t] for t in r.text[sel]], mask, device)
                out["hit_robot"] = float(hit.mean())
        return out

    @staticmethod
    def _hits(model: SimDualEncoder, images: np.ndarray, texts: list[str], mask: torch.Tensor, device) -> np.ndarray:
        hits = []
        for s in range(0, len(images), 128):
            img = torch.from_numpy(images[s : s + 128]).to(device).permute(0, 3, 1, 2).float() / 255.0
            scores = model.score(img, model.encode_text(texts[s : s + 128]))
            hits.append(centroid_hits(scores.centroid, mask[s : s + 128]).cpu().numpy())
        return np.concatenate(hits)

    def export(self, model, ckpt: Path, meta: dict) -> None:
        save_module(ckpt, "semantic", model, self.config, meta)
