"""Record simulated episodes into a LeRobot dataset, in parallel and resumably.

Worker processes each own one PyBullet client; they simulate episodes and encode their videos
into the dataset's staging folder (`stage_episode`). The parent commits staged episodes strictly
in episode order, so the dataset on disk is always a valid prefix: stop the command at any time
and run it again with the same arguments to continue where it stopped.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from vidplan_server.data.writer import DatasetWriter, StagedEpisode, stage_episode
from vidplan_server.sim.episode import EpisodeConfig, episode_seed, run_episode
from vidplan_server.sim.scene import SimScene


@dataclass(frozen=True)
class RecordSummary:
    recorded: int
    skipped: int
    successes: int
    seconds: float

    @property
    def episodes_per_minute(self) -> float:
        return 60.0 * self.recorded / self.seconds if self.seconds > 0 else 0.0


_worker_scene: SimScene | None = None


def _worker_init(silence_stdout: bool = False) -> None:
    global _worker_scene
    if silence_stdout:
        # Pool workers report through return values; their stdout would only carry PyBullet's banner.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    _worker_scene = SimScene()


def _work(args: tuple[int, int, EpisodeConfig, str]) -> tuple[int, StagedEpisode]:
    index, seed, config, root = args
    episode = run_episode(seed, config, scene=_worker_scene)
    return index, stage_episode(episode, Path(root))


def record(
    out: str | Path,
    episodes: int,
    seed: int = 0,
    config: EpisodeConfig | None = None,
    workers: int = 1,
    progress: bool = True,
) -> RecordSummary:
    """Make ``out`` hold ``episodes`` episodes of ``config.split``, recording only the missing ones."""
    config = config or EpisodeConfig()
    writer = DatasetWriter(
        out,
        resolution=config.resolution,
        info_extra={
            "generator": "vidplan sim record",
            "split": config.split,
            "seed": seed,
            "imperfect_fraction": config.imperfect_fraction,
        },
    )
    start = writer.num_episodes
    todo = [(i, episode_seed(seed, config.split, i), config, str(out)) for i in range(start, episodes)]
    bar = tqdm(
        total=episodes, initial=min(start, episodes), desc=f"record {config.split}", unit="ep", disable=not progress
    )
    successes = 0
    t0 = time.perf_counter()

    def commit(staged: StagedEpisode) -> None:
        nonlocal successes
        writer.commit(staged)
        successes += staged.success
        bar.update(1)
        bar.set_postfix(success=f"{successes / max(1, bar.n - start):.2f}")

    try:
        if workers <= 1 or len(todo) <= 1:
            _worker_init()
            for job in todo:
                commit(_work(job)[1])
        else:
            ctx = mp.get_context("spawn")  # a fresh interpreter per worker: no forked PyBullet state
            with ctx.Pool(workers, initializer=_worker_init, initargs=(True,)) as pool:
                pending: dict[int, StagedEpisode] = {}
                next_index = start
                for index, staged in pool.imap_unordered(_work, todo):
                    pending[index] = staged
                    while next_index in pending:  # commit in order: the dataset stays a prefix
                        commit(pending.pop(next_index))
                        next_index += 1
    finally:
        bar.close()
        writer.finalize()
        writer.close()
    return RecordSummary(len(todo), min(start, episodes), successes, time.perf_counter() - t0)


def parse_resolution(text: str) -> tuple[int, int]:
    """``"64x64"`` or ``"180x320"`` (height x width) -> ``(64, 64)``."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise ValueError(f"--resolution must look like HxW (e.g. 64x64 or 180x320), got {text!r}") from exc
    if h < 16 or w < 16 or h > 1080 or w > 1920 or h % 2 or w % 2:
        raise ValueError(f"--resolution {text}: height and width must be even and between 16 and 1920")
    return h, w
