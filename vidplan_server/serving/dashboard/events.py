"""The dashboard's events: plain JSON dicts, the same live (server-sent events) and in a plan log (one per line).

==========  ============================================================================================
type        fields
==========  ============================================================================================
hello       mode ("live" or "replay"), model (cameras, horizon, frame_dt_s, model_version), render_hz
snapshot    t, sessions (the session list, :meth:`SessionBoard.summaries`), server (the server panel)
history     session, points (``[t, confidence, uncertainty, latency_ms]`` per plan, oldest first)
plan        t, session, sequence, instruction, the plan's figures (per frame, proposals, refinement, timings)
render      t, session, sequence, images as PNG data URLs: views (current cameras, one row), predicted,
            latent (the paper's latent colour map over the prediction), pixel (per-pixel map; may be null)
==========  ============================================================================================

Predicted images are one sheet each: a row per camera view, a column per predicted frame (``+frame_dt_s`` s
apart), so the per-frame figures line up under the columns. Times ``t`` are wall-clock seconds.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence

import cv2
import numpy as np

from vidplan_server.serving.messages import PlanReply


def _floats(values) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in np.asarray(values, dtype=np.float64).ravel().tolist()]


def _mean(values) -> float | None:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()) if a.size and np.isfinite(a).all() else None


def plan_event(key: str, instruction: str, reply: PlanReply, t: float) -> dict:
    """The figures of one answered plan (no images)."""
    r = reply.result
    timings = {
        **{f"planner_{k}": round(float(v), 2) for k, v in r.timings_ms.items()},
        **{k: round(float(v), 2) for k, v in reply.timings_ms.items()},
    }
    kinds = list(r.proposal_kinds)
    return {
        "type": "plan",
        "t": round(t, 3),
        "session": key,
        "sequence": reply.sequence,
        "instruction": instruction,
        "confidence": float(r.confidence),
        "uncertainty": _floats(r.uncertainty),
        "expected_error": _floats(r.expected_error),
        "semantic_reward": _floats(r.semantic_reward),
        "value": _floats(r.value),
        "mean_uncertainty": _mean(r.uncertainty),
        "frame_dt_s": round(float(r.frame_stride * r.dt_s), 4),
        "proposal_scores": _floats(r.proposal_scores),
        "proposal_kinds": kinds,
        "winner": int(r.winner),
        "winner_kind": kinds[r.winner] if 0 <= r.winner < len(kinds) else "",
        "refined": bool(r.refined),
        "refinement": [
            {
                "iteration": s.iteration,
                "objective": _floats([s.objective])[0],
                "value": _floats([s.value])[0],
                "uncertainty": _floats([s.uncertainty])[0],
            }
            for s in r.refinement
        ],
        "timings_ms": timings,
        "latency_ms": round(float(reply.timings_ms.get("total", r.timings_ms.get("total", 0.0))), 2),
        "deadline_hit": bool(r.deadline_hit),
        "notes": list(r.notes),
    }


# ------------------------------------------------------------------------------------------------ images
def views_row(frames: np.ndarray) -> np.ndarray:
    """The current camera views (V, h, w, 3) side by side: (h, V*w, 3)."""
    return np.concatenate(list(frames), axis=1)


def sheet(stack: np.ndarray) -> np.ndarray:
    """Predicted frames (H, V, h, w, 3) as one image: a row per view, a column per frame, (V*h, H*w, 3)."""
    H, V, h, w, _ = stack.shape
    return np.ascontiguousarray(stack.transpose(1, 2, 0, 3, 4).reshape(V * h, H * w, 3))


def png_data_url(rgb: np.ndarray) -> str:
    """An RGB uint8 image as a ``data:image/png;base64,...`` URL (fast compression: these change twice a second)."""
    ok, data = cv2.imencode(
        ".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 3]
    )
    if not ok:
        raise ValueError(f"could not encode an image of shape {rgb.shape} as PNG")
    return "data:image/png;base64," + base64.b64encode(data.tobytes()).decode()


def render_event(
    key: str,
    sequence: int,
    t: float,
    views: np.ndarray | None,
    predicted: np.ndarray | None,
    latent: np.ndarray | None,
    pixel: np.ndarray | None,
    render_ms: float,
    cameras: Sequence[str],
) -> dict:
    """Images of one plan: ``views`` (V, h, w, 3), the others (H, V, h, w, 3) uint8, each optional."""
    return {
        "type": "render",
        "t": round(t, 3),
        "session": key,
        "sequence": sequence,
        "cameras": list(cameras),
        "views": None if views is None else png_data_url(views_row(views)),
        "predicted": None if predicted is None else png_data_url(sheet(predicted)),
        "latent": None if latent is None else png_data_url(sheet(latent)),
        "pixel": None if pixel is None else png_data_url(sheet(pixel)),
        "render_ms": round(render_ms, 1),
    }
