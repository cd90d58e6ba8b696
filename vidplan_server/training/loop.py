"""The one training loop every stage (codec, world, flow map, later the heads) shares.

A stage says what a batch is, what the loss is, how to evaluate on held-out data and how to export its
module(s) into the checkpoint bundle; this loop owns everything else: seeding, AdamW with linear
warm-up and cosine decay, gradient clipping, an optional EMA of the weights (what gets exported and
evaluated when enabled), bf16 autocast on CUDA, a progress bar with the loss, periodic held-out
evaluation, and resumable state.

Resume state lives in ``<ckpt>/training/<stage>/``: ``state.safetensors`` (model, EMA and optimizer
tensors, the batch generator's state) and ``state.json`` (step, elapsed time, evaluation history, the
loop config). Both are written atomically at every save, weights first, so an interrupted run resumes
from its last save with the same batches it would have drawn. Nothing is pickled.
"""

from __future__ import annotations

import json
import math
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from vidplan_server.models.checkpoint import CheckpointError, _write_atomic


@dataclass(frozen=True)
class LoopConfig:
    steps: int = 1000
    batch_size: int = 16
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.0  # 0 disables the EMA
    eval_every: int = 250
    save_every: int = 250
    seed: int = 0


class Stage(ABC):
    """One training stage. ``model`` holds every trainable parameter of the stage."""

    name: str
    model: nn.Module

    @abstractmethod
    def batch(self, generator: torch.Generator, batch_size: int, device: torch.device) -> Any:
        """A training batch drawn with ``generator`` (CPU generator, so runs are reproducible)."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss and a few floats to show on the progress bar."""

    @abstractmethod
    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Held-out metrics; deterministic for a given model."""

    @abstractmethod
    def export(self, model: nn.Module, ckpt: Path, meta: dict) -> None:
        """Write the stage's module(s) into the checkpoint bundle ``ckpt``."""


def pick_device(name: str | None = None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op on CPU (CPU bf16 matmuls are slower there, not faster)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def lr_at(step: int, cfg: LoopConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine)


# ------------------------------------------------------------------------------------ state files
def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


class _Ema:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))  # short warm-up, as in common EMA practice
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.detach(), 1.0 - d)
            else:
                self.shadow[k].copy_(v)


@contextmanager
def _weights_for_export(model: nn.Module, ema: _Ema | None):
    """The model with its EMA weights swapped in (if there is an EMA), restored afterwards."""
    if ema is None:
        yield model
        return
    live = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(ema.shadow)
    try:
        yield model
    finally:
        model.load_state_dict(live)


@dataclass
class TrainResult:
    steps: int
    seconds: float
    final_eval: dict[str, float]
    history: list[dict]


def train(
    stage: Stage,
    cfg: LoopConfig,
    ckpt: str | Path,
    *,
    resume: bool = False,
    device: torch.device | None = None,
    progress: bool = True,
    extra_meta: dict | None = None,
) -> TrainResult:
    """Train ``stage`` to ``cfg.steps`` and export it into ``ckpt``; see the module docstring."""
    ckpt = Path(ckpt)
    device = device or pick_device()
    state_dir = ckpt / "training" / stage.name
    state_file, meta_file = state_dir / "state.safetensors", state_dir / "state.json"
    if state_file.exists() and not resume:
        raise CheckpointError(
            f"{state_dir}: a {stage.name} run already exists here; "
            "pass --resume to continue it, or choose another --out"
        )
    torch.manual_seed(cfg.seed)
    model = stage.model.to(device)
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.99),
    )
    ema = _Ema(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    generator = torch.Generator().manual_seed(cfg.seed)
    step, elapsed, history = 0, 0.0, []

    if resume and state_file.exists():
        try:
            tensors = load_file(str(state_file))
            meta = json.loads(meta_file.read_text())
        except Exception as exc:  # noqa: BLE001 - any unreadable state is reported the same way
            raise CheckpointError(f"{state_dir}: resume state is unreadable ({exc})") from exc
        saved = LoopConfig(**meta["loop"])
        if replace(saved, steps=cfg.steps, eval_every=cfg.eval_every, save_every=cfg.save_every) != cfg:
            raise CheckpointError(
                f"{meta_file}: the run was started with {saved}, not {cfg}; only --steps may change on --resume"
            )
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        if ema is not None:
            ema.shadow = {k[4:]: v.to(device) for k, v in tensors.items() if k.startswith("ema.")}
        opt.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
        generator.set_state(tensors["generator"])
        step, elapsed, history = meta["step"], meta["elapsed_s"], meta["history"]

    def run_eval() -> dict[str, float]:
        model.eval()
        with torch.no_grad(), autocast(device), _weights_for_export(model, ema) as m:
            metrics = stage.evaluate(m, device)
        model.train()
        history.append({"step": step, **metrics})
        return metrics

    def save() -> None:
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        if ema is not None:
            tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.shadow.items()})
        opt_tensors, opt_meta = _flatten_optimizer(opt)
        tensors.update(opt_tensors)
        tensors["generator"] = generator.get_state()
        _write_atomic(state_file, lambda tmp: save_file(tensors, tmp))
        meta = {
            "stage": stage.name,
            "step": step,
            "elapsed_s": elapsed,
            "history": history,
            "loop": asdict(cfg),
            "optimizer": opt_meta,
        }
        _write_atomic(meta_file, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1)))

    def export(final_eval: dict[str, float]) -> None:
        meta = {
            "steps": step,
            "train_seconds": round(elapsed, 1),
            "device": str(device),
            "loop": asdict(cfg),
            "eval": final_eval,
            **(extra_meta or {}),
        }
        with _weights_for_export(model, ema) as m:
            stage.export(m, ckpt, meta)

    model.train()
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {stage.name}", disable=not progress, dynamic_ncols=True)
    last_eval: dict[str, float] = history[-1] if history else {}
    while step < cfg.steps:
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        batch = stage.batch(generator, cfg.batch_size, device)
        with autocast(device):
            loss, shown = stage.loss(model, batch, generator)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{stage.name}: loss became {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if ema is not None:
            ema.update(model, step)
        step += 1
        elapsed += time.perf_counter() - t0
        bar.update(1)
        bar.set_postfix(
            loss=f"{loss.item():.4f}",
            **{k: f"{v:.4g}" for k, v in shown.items()},
            **{f"val_{k}": f"{v:.4g}" for k, v in list(last_eval.items())[:2] if k != "step"},
        )
        if step % cfg.eval_every == 0 or step == cfg.steps:
            last_eval = run_eval()
        if step % cfg.save_every == 0 or step == cfg.steps:
            save()
            export({k: v for k, v in last_eval.items() if k != "step"})
    bar.close()
    final = {k: v for k, v in (history[-1] if history else {}).items() if k != "step"}
    if not history or history[-1]["step"] != step:
        # resumed at or past its last step from a save made between evaluations: evaluate and export it
        final = {k: v for k, v in run_eval().items() if k != "step"}
        save()
        export(final)
    return TrainResult(steps=step, seconds=elapsed, final_eval=final, history=history)
