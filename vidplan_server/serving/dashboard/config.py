"""Settings of the operator dashboard (no heavy imports: ``ServerConfig`` holds one)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RenderModel:
    """The model a render process loads: the server's own bundle, device and planner settings."""

    ckpt: str | None = None  # None: the bundled checkpoint
    device: str = "cpu"
    planner_config: Any = None  # a PlannerConfig; None: its defaults


@dataclass(frozen=True)
class DashboardConfig:
    """Knobs of the dashboard's :class:`~.monitor.DashboardMonitor`; defaults are the production ones."""

    render_hz: float = 2.0  # heatmap renders per watched session and second, at most
    history_s: float = 300.0  # timeline kept per session (s); a session idle this long leaves the list
    stale_s: float = 10.0  # a session without a plan for this long is shown greyed out
    snapshot_hz: float = 1.0  # session list and server panel updates per second
    send_queue: int = 32  # events waiting for one browser; past it new ones are dropped for that browser
    stall_s: float = 10.0  # a browser whose queue stayed full this long is disconnected (and stops costing renders)
    max_watchers: int = 16  # browsers connected at once; more are refused (503)
    max_sessions: int = 256  # sessions the board tracks (least recently planned dropped first)
    render_threads: int = 1  # intra-op threads of the render thread (the planner keeps its own)
    # OS priority (nice) of the renderer, Linux: 15 = about 3.5 % of a core the planner also wants (Linux's
    # weights: 36 against 1024), all of what it leaves idle; 19 = 1.5 %, which starves renders of a busy planner;
    # 0 = the server's own.
    render_nice: int = 15
    # Render in a child process that loads this model (what `vidplan serve` does); None: with the service's own
    # planner on the render thread (tests, and planners given in-process).
    render_model: RenderModel | None = None
    # Rendering starts this long after the plan's reply left the planner, so the transport has sent it by then.
    send_grace_s: float = 0.01
    # Wait up to this long for the planner to be idle before rendering (0 = render at once, beside the planner).
    defer_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.render_hz > 0 or not self.snapshot_hz > 0:
            raise ValueError(f"render_hz and snapshot_hz must be > 0, got {self.render_hz}, {self.snapshot_hz}")
        for name in ("send_queue", "max_watchers", "max_sessions", "render_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("history_s", "stale_s", "stall_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.render_nice <= 19:
            raise ValueError(f"render_nice must be in [0, 19], got {self.render_nice}")
        if self.send_grace_s < 0 or self.defer_s < 0:
            raise ValueError("send_grace_s and defer_s must be >= 0")
