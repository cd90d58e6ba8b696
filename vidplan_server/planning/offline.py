"""Plan offline at one step of a recorded episode (``vidplan plan``), and draw what the planner saw.

The request is built the way the server builds it from a live stream: the T history frames are the
observations ``(T - 1 - j) * frame_stride`` steps before step K (the earliest one repeated at the start of
an episode, as the training windows do), the state is the robot state at K, the instruction the
episode's. The figure shows the three current views, the winner's predicted frames (views stacked as the
model sees them), the uncertainty colour map over them, and every proposal's score.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from vidplan_server.data.schema import CAMERA_NAMES, Episode
from vidplan_server.planning.types import PlanningError, PlanOptions, PlanRequest, PlanResult, RobotState


def request_from_episode(
    episode: Episode,
    step: int,
    history: int,
    frame_stride: int,
    options: PlanOptions = PlanOptions(),
    instruction: str | None = None,
) -> PlanRequest:
    """The plan request at ``step`` of ``episode``."""
    if not 0 <= step < len(episode):
        raise PlanningError(f"step: must be in [0, {len(episode) - 1}] for this episode, got {step}")
    idx = [max(step - (history - 1 - j) * frame_stride, step % frame_stride) for j in range(history)]
    frames = np.stack([np.stack([episode.images[c][i] for c in CAMERA_NAMES]) for i in idx])
    state = RobotState(
        joint_position=np.asarray(episode.joint_position[step], dtype=np.float64),
        cartesian_position=np.asarray(episode.cartesian_position[step], dtype=np.float64),
        gripper_position=float(np.asarray(episode.gripper_position[step]).reshape(-1)[0]),
    )
    return PlanRequest(instruction or episode.language_instruction, frames, state, options=options)


def result_summary(result: PlanResult) -> dict:
    """The JSON-friendly part of a result (no images)."""
    out = {}
    for key, value in asdict(result).items():
        if key in ("predicted_frames", "heatmaps"):
            continue
        out[key] = value.tolist() if isinstance(value, np.ndarray) else value
    return out


def plan_figure(request: PlanRequest, result: PlanResult, path: Path) -> Path:
    """Save the picture of one plan at ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    current = request.history[-1]  # (V, H, W, 3)
    H = len(result.uncertainty)
    fig = plt.figure(figsize=(2.0 * max(H, 3) + 1, 10.5), constrained_layout=True)
    grid = fig.add_gridspec(4, max(H, 3), height_ratios=[1.0, 2.2, 2.2, 1.3])
    for v, name in enumerate(CAMERA_NAMES):
        ax = fig.add_subplot(grid[0, v])
        ax.imshow(current[v])
        ax.set_title(name.replace("_left", ""), fontsize=8)
        ax.axis("off")
    fig.text(0.99, 0.985, f'"{request.instruction}"', ha="right", va="top", fontsize=9)
    rows = (("predicted (winner)", result.predicted_frames), ("uncertainty colour map", result.heatmaps))
    for r, (title, images) in enumerate(rows, start=1):
        for t in range(H):
            ax = fig.add_subplot(grid[r, t])
            if images is not None:
                ax.imshow(np.concatenate(list(images[t]), axis=0))
            ax.set_title(
                f"{title}, +{(t + 1) * result.frame_stride * result.dt_s:.1f} s\n"
                f"u={result.uncertainty[t]:.2f} r_s={result.semantic_reward[t]:+.2f} "
                f"V={result.value[t]:.2f}",
                fontsize=7,
            )
            ax.axis("off")
    ax = fig.add_subplot(grid[3, :])
    scores = result.proposal_scores
    colors = ["tab:red" if i == result.winner else "tab:gray" for i in range(len(scores))]
    ax.bar(range(len(scores)), scores, color=colors)
    ax.set_xticks(range(len(scores)), result.proposal_kinds, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("score")
    state = "refined" if result.refined else "not refined"
    ax.set_title(
        f"proposal scores (winner in red, {state}; confidence {result.confidence:.2f}; "
        f"{result.timings_ms['total']:.0f} ms)",
        fontsize=9,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def save_plan(request: PlanRequest, result: PlanResult, out: Path, stem: str) -> tuple[Path, Path]:
    """Write ``<stem>.png`` and ``<stem>.json`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    png = plan_figure(request, result, out / f"{stem}.png")
    js = out / f"{stem}.json"
    js.write_text(json.dumps({"instruction": request.instruction, **result_summary(result)}, indent=1))
    return png, js
