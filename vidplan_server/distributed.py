"""Data-parallel training under ``torchrun``: every ``vidplan train <stage>`` runs on N processes.

    torchrun --standalone --nproc-per-node N -m vidplan_server.cli train world --data DIR --out CKPT

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`data_parallel` then joins the process group
(NCCL on GPUs, one per process by ``LOCAL_RANK``; gloo on CPU) and runs the stage's training loop
(:func:`vidplan_server.training.loop.train`, unchanged) on every rank with a :class:`ShardedStage` around the
stage:

- **Data sharded per rank.** Each step every rank draws the same ``N`` batches from the loop's seeded batch
  stream and keeps the one of its rank: the ranks' batches together are one global batch of ``N x batch_size``,
  and the stream (saved in the resume state) does not depend on ``N``.
- **Gradients averaged** across ranks as each parameter's gradient is accumulated (an all-reduce per parameter,
  in the same order on every rank, before clipping and the optimizer step), so every rank takes the same step and
  the weights stay identical; rank 0's weights are broadcast once before the first step.
- **One writer.** Rank 0 writes the checkpoint bundle and the resume state exactly as a single process does; the
  other ranks' loops save their state into a scratch folder and export nothing. The bundle and the resume state
  therefore have the single-process format, and ``--resume`` continues with any number of processes (the state
  holds nothing per rank).
- Progress bar and the closing line on rank 0 only.

Known costs, accepted for an unchanged loop: every rank draws all ``N`` batches (only one is used), the loss's
own noise draws come from the shared stream and so are the same on every rank (the data differ), and the
all-reduce runs per parameter rather than in DDP's buckets. Moving the gradient hooks and the writer check into
``training/loop.py`` would remove all three.

The loop and the stages are not modified: the stage commands' call of ``train`` is wrapped for the duration of
the run (:func:`data_parallel`), which a test keeps honest (``tests/test_distributed.py``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    """This process's place in a torchrun job."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env(environ: dict[str, str] | None = None) -> World:
    """The torchrun variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); a single process without them."""
    env = os.environ if environ is None else environ
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def device_for(world: World, requested: str | None) -> str | None:
    """The device of this rank: ``cuda:LOCAL_RANK`` when CUDA is asked for (or present and nothing is), else as
    requested."""
    if requested in (None, "cuda") and torch.cuda.is_available():
        return f"cuda:{world.local_rank}"
    return requested


@dataclass
class ShardedStage:
    """A training stage on one rank of ``world``: its batch shard, gradients averaged, exports on rank 0 only.

    Quacks like :class:`vidplan_server.training.loop.Stage` (the loop reads ``name`` and ``model`` and calls
    ``batch``, ``loss``, ``evaluate`` and ``export``)."""

    inner: Any
    world: World
    losses: list[float] = field(default_factory=list)
    _synced: bool = False

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def model(self) -> nn.Module:
        return self.inner.model

    def batch(self, generator: torch.Generator, batch_size: int, device: torch.device):
        if not self._synced:
            self._start(self.inner.model)
        mine = None
        for rank in range(self.world.size):  # the same draws on every rank: one global batch, split by rank
            drawn = self.inner.batch(generator, batch_size, device)
            if rank == self.world.rank:
                mine = drawn
        return mine

    def loss(self, model: nn.Module, batch, generator: torch.Generator):
        loss, shown = self.inner.loss(model, batch, generator)
        self.losses.append(float(loss.detach()))
        return loss, shown

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        return self.inner.evaluate(model, device)

    def export(self, model: nn.Module, ckpt: Path, meta: dict) -> None:
        if self.world.rank == 0:
            self.inner.export(model, ckpt, {**meta, "processes": self.world.size})

    def _start(self, model: nn.Module) -> None:
        """Same weights everywhere (rank 0's), then average every gradient as it is accumulated."""
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                dist.broadcast(tensor.data, src=0)
        size = self.world.size

        def average(param: torch.Tensor) -> None:
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
            param.grad.div_(size)

        for param in model.parameters():
            if param.requires_grad:
                param.register_post_accumulate_grad_hook(average)
        self._synced = True


def _sharded_train(world: World, scratch: Path, inner_train, last: list[ShardedStage]):
    """``train`` of :mod:`vidplan_server.training.loop`, run on every rank with the stage sharded."""

    def train(stage, cfg, ckpt, *, resume=False, device=None, progress=True, extra_meta=None):
        sharded = ShardedStage(stage, world)
        last.append(sharded)
        target = Path(ckpt)
        if world.rank != 0:
            # The other ranks' loops keep their resume state in scratch, starting from rank 0's saved one.
            state = target / "training" / stage.name
            target = scratch / f"rank{world.rank}"
            if resume and state.is_dir():
                shutil.copytree(state, target / "training" / stage.name, dirs_exist_ok=True)
        try:
            return inner_train(
                sharded,
                cfg,
                target,
                resume=resume,
                device=device,
                progress=progress and world.rank == 0,
                extra_meta=extra_meta,
            )
        finally:
            dist.barrier()  # rank 0's export is on disk before any rank goes on (e.g. to add the colour map)

    return train


@contextlib.contextmanager
def data_parallel(world: World, backend: str | None = None) -> Iterator[list[ShardedStage]]:
    """Join the torchrun process group and shard every stage trained inside; yields the stages trained (their
    ``losses`` per step of this rank). A single process (``world.size`` 1) runs unchanged."""
    if not world.distributed:
        yield []
        return
    from vidplan_server.training import commands

    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group(backend)
    last: list[ShardedStage] = []
    inner_train = commands.train
    with tempfile.TemporaryDirectory(prefix=f"vidplan-rank{world.rank}-") as scratch:
        commands.train = _sharded_train(world, Path(scratch), inner_train, last)
        try:
            yield last
        finally:
            commands.train = inner_train
            dist.barrier()
            dist.destroy_process_group()


def loss_summary(stages: list[ShardedStage], world: World, window: int = 3) -> str:
    """One line: processes, and this rank's mean training loss over its first and last steps (of this run)."""
    if not stages or not stages[-1].losses:
        return ""
    losses = stages[-1].losses
    first, last = losses[:window], losses[-window:]
    return (
        f"data-parallel over {world.size} processes: rank {world.rank}'s training loss "
        f"{sum(first) / len(first):.4g} -> {sum(last) / len(last):.4g} over {len(losses)} steps"
    )
