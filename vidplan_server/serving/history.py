"""Which stored frames make up the world model's history.

The model sees ``T`` frames spaced ``frame_stride`` control steps apart (``spacing_s`` =
``frame_stride * dt_s``, 0.2 s by default), the current one last. Robots do not deliver frames on an
exact grid, so for each target time ``t0 - j * spacing_s`` we take the stored frame whose timestamp is
nearest. A young session has no frame that old; the nearest is then its oldest frame, which pads the
history, as the planner does at the start of an episode.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def select_history(timestamps_s: Sequence[float], t0_s: float, length: int, spacing_s: float) -> list[int]:
    """Indices into ``timestamps_s`` of the ``length`` history frames, oldest first.

    ``timestamps_s`` are the candidates' robot-clock times (seconds, any order); ``t0_s`` the current
    observation's time; ties go to the later frame (the fresher view). The current frame is normally
    among the candidates and then is always picked last.
    """
    if length < 1:
        raise ValueError(f"history length must be >= 1, got {length}")
    if not len(timestamps_s):
        raise ValueError("no frames to build a history from")
    times = np.asarray(timestamps_s, dtype=np.float64)
    picks = []
    for j in range(length - 1, -1, -1):
        target = t0_s - j * spacing_s
        distance = np.abs(times - target)
        # Among equally near frames prefer the latest: argmax over (-distance, time).
        order = np.lexsort((times, -distance))
        picks.append(int(order[-1]))
    return picks
