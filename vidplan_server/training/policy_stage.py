"""Stage ``policy``: behaviour cloning of the flow-matching policy (:mod:`vidplan_server.models.policy`).

Data: every step of the dataset's **successful, nominal** episodes (``success`` and no scripted failure mode;
DROID ports without that metadata keep every successful episode) -- the robot's good demonstrations only, as
pi0.5 is trained on. One sample is (the three views at step t, the robot state at t, the instruction, the
actions t .. t + S - 1), the last action repeated past the episode's end (the robot holds).

Augmentation: a random shift of up to ``shift_px`` pixels per view (replicate padding, then a crop), the
standard regulariser of pixel-based behaviour cloning (DrQ, Diffusion Policy); colours are never changed,
they carry the instruction's meaning.

Held-out metrics: the flow-matching loss on fixed noise and times, and the error of one sampled chunk (fixed
noise) against the demonstrated one: the end position (cm) and the gripper (mean absolute). With the auxiliary
where-is-the-object head (``target_aux``, ``models/policy.py``), also its error (cm) where the recording holds the
simulator's object poses.

The auxiliary head's labels: the instructed object's position at each step (``GroundTruth.object_poses`` at
``target_index``), NaN for samples without ground truth (DAgger folders, real data).

The goal policy (``target_map``, module ``goal_policy``, see ``models/policy.py``) learns from the same samples,
each with its **target maps**: the semantic encoder's relevance of the sample's instruction over its three views
(:func:`add_target_maps`, the encoder of the bundle it warm-starts from, the one the planner uses). Decided, so that
it follows the map on objects it has never seen:

- with probability ``mask_words``, the words naming the target (colour and object) are replaced by random words,
  which the tokenizer hashes to its unknown-word buckets, as it does an ``ood`` object's words;
- with probability ``map_dropout`` the maps are zeros (it stays a language-conditioned policy without them);
- the random shift moves each view and its map together.

With maps, the held-out metrics also report the end error with the target's words masked (``masked_end_error_cm``).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vidplan_server.data.errors import DatasetError
from vidplan_server.data.schema import CAMERA_NAMES
from vidplan_server.models.checkpoint import save_module
from vidplan_server.models.policy import FlowPolicy, PolicyConfig
from vidplan_server.training.loop import Stage

EVAL_SAMPLES = 256


@dataclass
class PolicyData:
    """Samples in memory. frames (N, V, H, W, 3) uint8; state (N, 7); chunk (N, S, 7); text (N,) index into
    ``instructions``; maps (N, V, h, w) float16 in [0, 1], the instruction's relevance per view (or None);
    target_pos (N, 3) float32, the instructed object's base-frame position (m), NaN where unknown (or None)."""

    frames: np.ndarray
    state: np.ndarray
    chunk: np.ndarray
    text: np.ndarray
    instructions: list[str]
    maps: np.ndarray | None = None
    target_pos: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.frames)

    @staticmethod
    def concat(parts: list[PolicyData]) -> PolicyData:
        """The samples of all ``parts`` in one set (instruction indices remapped to one list)."""
        instructions: dict[str, int] = {}
        texts = []
        for d in parts:
            remap = np.array([instructions.setdefault(t, len(instructions)) for t in d.instructions])
            texts.append(remap[d.text])
        return PolicyData(
            np.concatenate([d.frames for d in parts]),
            np.concatenate([d.state for d in parts]),
            np.concatenate([d.chunk for d in parts]),
            np.concatenate(texts),
            list(instructions),
            np.concatenate([d.maps for d in parts]) if all(d.maps is not None for d in parts) else None,
            _concat_positions(parts),
        )


def _concat_positions(parts: list[PolicyData]) -> np.ndarray | None:
    """The parts' ``target_pos`` in one array, NaN rows for parts without it; None if no part has it."""
    if all(d.target_pos is None for d in parts):
        return None
    unknown = np.full(3, np.nan, np.float32)
    return np.concatenate([d.target_pos if d.target_pos is not None else np.tile(unknown, (len(d), 1)) for d in parts])


def is_demonstration(success: bool, metadata: dict) -> bool:
    """A successful episode that ran no scripted failure mode."""
    return bool(success) and not metadata.get("failure_mode")


def has_positions(data: PolicyData) -> bool:
    """Whether some sample of ``data`` knows its instructed object's position (the auxiliary head's label)."""
    return data.target_pos is not None and bool(np.isfinite(data.target_pos).all(-1).any())


def policy_data(
    data: Path,
    indices: list[int],
    image_size: tuple[int, int],
    chunk: int,
    progress: bool = True,
) -> PolicyData:
    """The samples of the demonstrations among episodes ``indices`` of dataset ``data``."""
    from vidplan_server.data.reader import EpisodeDataset

    dataset = EpisodeDataset(data)
    frames, states, chunks, texts, positions, instructions = [], [], [], [], [], {}
    for k in tqdm(indices, desc=f"load {Path(data).name}", disable=not progress, leave=False):
        ep = dataset.load_episode(k, images=True, ground_truth=True, masks=False)  # poses only
        if not is_demonstration(ep.success, ep.metadata):
            continue
        T = len(ep)
        views = []
        for cam in CAMERA_NAMES:
            f = ep.images[cam]
            if f.shape[1:3] != tuple(image_size):
                f = np.stack([cv2.resize(x, image_size[::-1], interpolation=cv2.INTER_AREA) for x in f])
            views.append(f)
        frames.append(np.stack(views, 1))
        states.append(np.concatenate([ep.cartesian_position, ep.gripper_position.reshape(T, 1)], 1))
        idx = np.minimum(np.arange(T)[:, None] + np.arange(chunk)[None], T - 1)
        chunks.append(ep.action[idx])
        texts.append(np.full(T, instructions.setdefault(ep.language_instruction, len(instructions))))
        gt = ep.ground_truth
        positions.append(gt.object_poses[:, gt.target_index, :3] if gt is not None else np.full((T, 3), np.nan))
    if not frames:
        raise DatasetError(f"{data}: no successful nominal episodes among {len(indices)} to learn the policy from")
    return PolicyData(
        np.concatenate(frames),
        np.concatenate(states).astype(np.float32),
        np.concatenate(chunks).astype(np.float32),
        np.concatenate(texts),
        list(instructions),
        target_pos=np.concatenate(positions).astype(np.float32),
    )


def add_target_maps(data: PolicyData, semantic, batch: int = 128, progress: bool = True) -> PolicyData:
    """``data`` with ``maps``: the relevance of each sample's instruction over each of its views, from the
    semantic backend ``semantic`` (``score(images (N, 3, H, W), text (N, D)).relevance`` (N, h, w))."""
    emb = semantic.encode_text(list(data.instructions)).float()  # (n_instructions, D)
    N, V = data.frames.shape[:2]
    out = None
    with torch.no_grad():
        for lo in tqdm(range(0, N, batch), desc="target maps", disable=not progress, leave=False):
            idx = np.arange(lo, min(N, lo + batch))
            images = torch.from_numpy(data.frames[idx]).permute(0, 1, 4, 2, 3).float().flatten(0, 1) / 255.0
            text = emb[torch.from_numpy(data.text[idx]).long()].repeat_interleave(V, 0)
            rel = semantic.score(images, text).relevance.float().clamp(0.0, 1.0)
            rel = rel.unflatten(0, (len(idx), V)).numpy().astype(np.float16)
            if out is None:
                out = np.zeros((N, V, *rel.shape[2:]), np.float16)
            out[idx] = rel
    return PolicyData(data.frames, data.state, data.chunk, data.text, data.instructions, out, data.target_pos)


_TARGET_WORDS = re.compile(r"^(put|pick up) the (.+?)( in the .+)?$")


def mask_target_words(instruction: str, rng: np.random.Generator) -> str:
    """The instruction with the words that name its target (after "put the" / "pick up the", before " in the")
    replaced by random 8-letter words: unknown to the vocabulary, as an ``ood`` object's words are. An
    instruction of another form is returned unchanged."""
    m = _TARGET_WORDS.match(instruction)
    if m is None:
        return instruction
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    fake = " ".join("".join(rng.choice(letters, 8)) for _ in m.group(2).split())
    return f"{m.group(1)} the {fake}{m.group(3) or ''}"


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """images (B, V, 3, H, W): each view shifted by up to ``pad`` pixels (replicate padding)."""
    if pad <= 0:
        return images
    B, V, C, H, W = images.shape
    flat = F.pad(images.flatten(0, 1), (pad, pad, pad, pad), mode="replicate")
    dx = torch.randint(0, 2 * pad + 1, (B * V,), generator=generator).tolist()
    dy = torch.randint(0, 2 * pad + 1, (B * V,), generator=generator).tolist()
    out = torch.stack([flat[i, :, y : y + H, x : x + W] for i, (x, y) in enumerate(zip(dx, dy, strict=True))])
    return out.view(B, V, C, H, W)


def to_tensors(data: PolicyData, idx: np.ndarray, device: torch.device):
    """(images, state, instructions, chunk, maps, target_pos) of samples ``idx``; maps (B, V, h, w) float or None;
    target_pos (B, 3) or None."""
    images = torch.from_numpy(data.frames[idx]).to(device).permute(0, 1, 4, 2, 3).float() / 255.0
    state = torch.from_numpy(data.state[idx]).to(device)
    chunk = torch.from_numpy(data.chunk[idx]).to(device)
    maps = None if data.maps is None else torch.from_numpy(data.maps[idx]).to(device).float()
    pos = None if data.target_pos is None else torch.from_numpy(data.target_pos[idx]).to(device)
    return images, state, [data.instructions[i] for i in data.text[idx]], chunk, maps, pos


@dataclass(frozen=True)
class MapAugment:
    """How the goal policy's training words and maps are perturbed (module docstring)."""

    mask_words: float = 0.5
    map_dropout: float = 0.1


class PolicyStage(Stage):
    def __init__(
        self,
        config: PolicyConfig,
        train: PolicyData,
        held_out: PolicyData,
        shift_px: int = 4,
        model: FlowPolicy | None = None,
        augment: MapAugment = MapAugment(),
    ) -> None:
        """``model``: a warm start (its config must be ``config``); a fresh network otherwise."""
        if model is not None and model.config != config:
            raise ValueError("the warm-start model's config differs from the stage's")
        if config.target_map and (train.maps is None or held_out.maps is None):
            raise ValueError("a target-map policy needs the samples' maps (add_target_maps)")
        if config.target_aux > 0 and not has_positions(train):
            # Decided: train on without the term rather than refuse (real DROID data has no object positions).
            warnings.warn(
                f"target_aux is {config.target_aux} but no training sample has the instructed object's position "
                "(ground_truth.object_poses): the auxiliary term is left out",
                stacklevel=2,
            )
        self.config = config
        self.name = "goal_policy" if config.target_map else "policy"
        self.model = model if model is not None else FlowPolicy(config)
        self.train_set = train
        self.held_out = held_out
        self.shift_px = shift_px
        self.augment = augment

    def batch(self, generator, batch_size, device):
        idx = torch.randint(len(self.train_set), (batch_size,), generator=generator).numpy()
        images, state, texts, chunk, maps, pos = to_tensors(self.train_set, idx, device)
        if not self.config.target_map:
            return random_shift(images, self.shift_px, generator), state, texts, chunk, None, pos
        a = self.augment
        u = torch.rand((2, batch_size), generator=generator)
        maps = maps * (u[0] >= a.map_dropout).to(maps)[:, None, None, None]
        # The view and its map shift together: the map is the image's 4th channel through the shift.
        both = random_shift(torch.cat([images, FlowPolicy.map_channel(maps, images)], 2), self.shift_px, generator)
        rng = np.random.default_rng(int(torch.randint(2**31, (1,), generator=generator)))
        masked = (u[1] < a.mask_words).tolist()
        texts = [mask_target_words(t, rng) if m else t for t, m in zip(texts, masked, strict=True)]
        return both[:, :, :3], state, texts, chunk, both[:, :, 3], pos

    def loss(self, model: FlowPolicy, batch, generator):
        images, state, texts, chunk, maps, pos = batch
        terms = model.loss_terms(images, state, texts, chunk, generator, maps, pos)
        return model.weighted(terms), {f"{k}_loss": float(v.detach()) for k, v in terms.items()}

    def evaluate(self, model: FlowPolicy, device):
        n = len(self.held_out)
        idx = np.linspace(0, n - 1, min(EVAL_SAMPLES, n)).round().astype(int)
        g = torch.Generator().manual_seed(1234)
        with_maps = self.config.target_map
        losses, end_err, grip_err, masked_err, target_err = [], [], [], [], []
        for part in np.array_split(idx, max(1, len(idx) // 64)):
            images, state, texts, chunk, maps, pos = to_tensors(self.held_out, part, device)
            maps = maps if with_maps else None
            losses.append(float(model.loss(images, state, texts, chunk, g, maps)) * len(part))
            noise = torch.randn((len(part), 1, *chunk.shape[1:]), generator=g)
            pred = model.sample(images, state, texts, noise, maps)[:, 0]
            end_err.append((pred[:, -1, :3] - chunk[:, -1, :3]).norm(dim=-1).sum().item())
            grip_err.append((pred[..., 6] - chunk[..., 6]).abs().mean(1).sum().item())
            if model.target_head is not None and pos is not None:
                err = (model.predict_target(images, state, texts, maps) - pos).norm(dim=-1)
                target_err.extend(err[torch.isfinite(err)].tolist())
            if with_maps:
                rng = np.random.default_rng(0)
                masked = [mask_target_words(t, rng) for t in texts]
                pred = model.sample(images, state, masked, noise, maps)[:, 0]
                masked_err.append((pred[:, -1, :3] - chunk[:, -1, :3]).norm(dim=-1).sum().item())
        m = len(idx)
        out = {"loss": sum(losses) / m, "end_error_cm": 100 * sum(end_err) / m, "gripper_error": sum(grip_err) / m}
        if with_maps:
            out["masked_end_error_cm"] = 100 * sum(masked_err) / m
        if target_err:
            out["target_error_cm"] = 100 * float(np.mean(target_err))
        return out

    def export(self, model: FlowPolicy, ckpt: Path, meta: dict) -> None:
        save_module(ckpt, self.name, model, self.config, meta)
