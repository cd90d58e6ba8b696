"""Stage ``policy``: behaviour cloning of the flow-matching policy (:mod:`vidplan_server.models.policy`).

Data: every step of the dataset's **successful, nominal** episodes (``success`` and no scripted failure mode;
DROID ports without that metadata keep every successful episode) -- the robot's good demonstrations only, as
pi0.5 is trained on. One sample is (the three views at step t, the robot state at t, the instruction, the
actions t .. t + S - 1), the last action repeated past the episode's end (the robot holds).

Augmentation: a random shift of up to ``shift_px`` pixels per view (replicate padding, then a crop), the
standard regulariser of pixel-based behaviour cloning (DrQ, Diffusion Policy); colours are never changed,
they carry the instruction's meaning.

Held-out metrics: the flow-matching loss on fixed noise and times, and the error of one sampled chunk (fixed
noise) against the demonstrated one: the end position (cm) and the gripper (mean absolute).
"""

from __future__ import annotations

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
    ``instructions``."""

    frames: np.ndarray
    state: np.ndarray
    chunk: np.ndarray
    text: np.ndarray
    instructions: list[str]

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
        )


def is_demonstration(success: bool, metadata: dict) -> bool:
    """A successful episode that ran no scripted failure mode."""
    return bool(success) and not metadata.get("failure_mode")


def policy_data(
    data: Path, indices: list[int], image_size: tuple[int, int], chunk: int, progress: bool = True
) -> PolicyData:
    """The samples of the demonstrations among episodes ``indices`` of dataset ``data``."""
    from vidplan_server.data.reader import EpisodeDataset

    dataset = EpisodeDataset(data)
    frames, states, chunks, texts, instructions = [], [], [], [], {}
    for k in tqdm(indices, desc=f"load {Path(data).name}", disable=not progress, leave=False):
        ep = dataset.load_episode(k, images=True, ground_truth=False)
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
    if not frames:
        raise DatasetError(f"{data}: no successful nominal episodes among {len(indices)} to learn the policy from")
    return PolicyData(
        np.concatenate(frames),
        np.concatenate(states).astype(np.float32),
        np.concatenate(chunks).astype(np.float32),
        np.concatenate(texts),
        list(instructions),
    )


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
    images = torch.from_numpy(data.frames[idx]).to(device).permute(0, 1, 4, 2, 3).float() / 255.0
    state = torch.from_numpy(data.state[idx]).to(device)
    chunk = torch.from_numpy(data.chunk[idx]).to(device)
    return images, state, [data.instructions[i] for i in data.text[idx]], chunk


class PolicyStage(Stage):
    name = "policy"

    def __init__(self, config: PolicyConfig, train: PolicyData, held_out: PolicyData, shift_px: int = 4) -> None:
        self.config = config
        self.model = FlowPolicy(config)
        self.train_set = train
        self.held_out = held_out
        self.shift_px = shift_px

    def batch(self, generator, batch_size, device):
        idx = torch.randint(len(self.train_set), (batch_size,), generator=generator).numpy()
        images, state, texts, chunk = to_tensors(self.train_set, idx, device)
        return random_shift(images, self.shift_px, generator), state, texts, chunk

    def loss(self, model: FlowPolicy, batch, generator):
        images, state, texts, chunk = batch
        return model.loss(images, state, texts, chunk, generator), {}

    def evaluate(self, model: FlowPolicy, device):
        n = len(self.held_out)
        idx = np.linspace(0, n - 1, min(EVAL_SAMPLES, n)).round().astype(int)
        g = torch.Generator().manual_seed(1234)
        losses, end_err, grip_err = [], [], []
        for part in np.array_split(idx, max(1, len(idx) // 64)):
            images, state, texts, chunk = to_tensors(self.held_out, part, device)
            losses.append(float(model.loss(images, state, texts, chunk, g)) * len(part))
            noise = torch.randn((len(part), 1, *chunk.shape[1:]), generator=g)
            pred = model.sample(images, state, texts, noise)[:, 0]
            end_err.append((pred[:, -1, :3] - chunk[:, -1, :3]).norm(dim=-1).sum().item())
            grip_err.append((pred[..., 6] - chunk[..., 6]).abs().mean(1).sum().item())
        m = len(idx)
        return {"loss": sum(losses) / m, "end_error_cm": 100 * sum(end_err) / m, "gripper_error": sum(grip_err) / m}

    def export(self, model: FlowPolicy, ckpt: Path, meta: dict) -> None:
        save_module(ckpt, "policy", model, self.config, meta)
