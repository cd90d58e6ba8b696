"""Heatmaps for watched sessions, off the robot's critical path: one render thread, newest plan only.

What is rendered (:class:`PlanRenderer`): the returned chunk's rollout, recomputed from what the plan saw -- its
T history frames, the chunk's model-rate knots and the request's seed, through the planner's own public stages
(``encode_history``, ``knots``, ``rollout_noise``, ``rollout``) -- then the UQ head's entropy map, the decoded
prediction, the paper's latent colour map over it (``Planner.render``) and the per-pixel map
(:func:`~vidplan_server.models.heatmaps.pixel_heatmap`). The planner rolls every proposal out from one shared
noise draw and refines with that noise held, so this is the rollout the planner judged (the same frames to one
intensity level, from float rounding across thread counts; tested). A reply that already carries decoded frames and
heatmaps (the robot asked for ``return_heatmaps``) costs no decode.

Decided: recompute rather than keep every plan's latents. Keeping them would put a copy on the planner's path for
every plan of every robot, watched or not; recomputing costs one rollout of one proposal (a plan rolls out N = 12)
plus the decoding, and only for the plans an operator looks at, at most ``render_hz`` per watched session.

When and where (:class:`RenderWorker`): plans are handed over after their reply left the planner, in O(1), to a
single thread, which renders them in a child process of its own (:class:`ProcessRenderer`, what ``vidplan serve``
uses: lowest OS priority, ``render_threads`` intra-op threads, no lock shared with the planner) or, given only an
in-process planner (tests), on that thread itself at the lowest thread priority. Per session only the newest plan
waits; an older one that was not rendered yet is dropped (counted), never queued, so a renderer that falls behind
shows the newest plans it can and costs nothing more. Each session is rendered at most ``render_hz`` times a
second. Optionally (``defer_s``) a render waits for the planner to be idle, up to that long.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vidplan_server.serving.dashboard.config import RenderModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RenderJob:
    """What one plan's images are made from."""

    key: str  # the session on the board
    sequence: int
    t: float  # wall clock (s) when the plan was answered
    history: np.ndarray  # (T, V, h, w, 3) uint8: the frames the plan saw, oldest first
    actions: np.ndarray  # (S, 7) the returned chunk at the control rate
    seed: int
    flow_steps: int | None  # None: the planner's default
    predicted: np.ndarray | None = None  # (H, V, h, w, 3) uint8 when the reply carried them
    heatmaps: np.ndarray | None = None  # (H, V, h, w, 3) uint8 latent colour map overlay, likewise
    has_rollout: bool = True  # False in mode "policy" (no world model involved)


@dataclass(frozen=True)
class Rendered:
    """Images of one plan: views (V, h, w, 3); the others (H, V, h, w, 3) uint8; any may be None."""

    views: np.ndarray | None
    predicted: np.ndarray | None
    latent: np.ndarray | None
    pixel: np.ndarray | None
    render_ms: float


class PlanRenderer:
    """Renders a job with a :class:`~vidplan_server.planning.planner.Planner`'s public stages (module docstring).

    Safe to call beside ``Planner.plan`` on another thread: it only runs the networks forward under ``no_grad``
    and reads nothing the planner changes while planning.
    """

    STAGES = ("encode_history", "knots", "rollout_noise", "rollout", "render", "uq", "world", "config")

    def __init__(self, planner) -> None:
        self.planner = planner

    @classmethod
    def supports(cls, planner) -> bool:
        return all(hasattr(planner, name) for name in cls.STAGES)

    def __call__(self, job: RenderJob) -> Rendered:
        import torch

        from vidplan_server.models.heatmaps import overlay, pixel_heatmap
        from vidplan_server.planning.objective import uq_maps

        t0 = time.perf_counter()
        p = self.planner
        views = job.history[-1]
        if not job.has_rollout:
            return Rendered(views, None, None, None, (time.perf_counter() - t0) * 1e3)
        with torch.no_grad():
            history = p.encode_history(job.history)  # (1, T, C, V*h, w)
            knots = p.knots(np.asarray(job.actions)[None])  # (1, H, 7)
            noise = p.rollout_noise(1, tuple(history.shape[2:]), job.seed)
            steps = job.flow_steps or p.config.flow_steps
            pred = p.rollout(history, knots, steps, noise)  # (1, H, C, V*h, w)
            entropy, _, _ = uq_maps(p.uq, pred, history, p.config.score.confidence_eps)
            if job.predicted is not None and job.heatmaps is not None:
                predicted, latent = job.predicted, job.heatmaps
            else:
                predicted, latent = p.render(pred, entropy)  # (H, V, h, w, 3) each
            V, size = predicted.shape[1], predicted.shape[2:4]
            pixel = overlay(predicted, pixel_heatmap(entropy[0], V, tuple(size)))
        return Rendered(views, predicted, latent, pixel, (time.perf_counter() - t0) * 1e3)


def _render_process(conn, model: RenderModel, nice: int, threads: int) -> None:
    """The render process: its own threads and model, a low priority once loaded; renders the jobs it is sent."""
    import torch

    from vidplan_server.planning.planner import Planner, PlannerConfig

    torch.set_num_threads(threads)
    try:
        planner = Planner.load(model.ckpt, device=model.device, config=model.planner_config or PlannerConfig())
    except Exception as exc:  # noqa: BLE001 - reported to the server, which logs it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    render = PlanRenderer(planner)
    # Loaded at the server's priority (seconds, once, with the first watcher: at a low one a busy planner starved
    # the load for minutes); rendering at ``nice``, so that it takes only a small share of a CPU the planner wants.
    if nice and hasattr(os, "nice"):
        os.nice(nice)
    conn.send(("ready", None))
    while True:
        try:
            job = conn.recv()
        except EOFError:  # the server went away
            return
        if job is None:
            return
        try:
            conn.send(("ok", render(job)))
        except Exception as exc:  # noqa: BLE001 - one bad job does not end the process
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class ProcessRenderer:
    """Renders in a child process of its own, started on first use (and again if it dies).

    Decided: a process, not a thread of the server. A render thread shares the server's interpreter lock: measured
    on the shared 2-core machine (``benchmarks/dashboard_cost.py``), a niced render thread still added 13-15 % to
    the median plan latency of a watched robot, because the planner -- mostly Python dispatch of small tensor ops
    on a CPU -- waited for the lock while the low-priority thread held it. A process shares no lock with the
    planner and renders at a low OS priority (``nice``, default 15: Linux's scheduler then gives it about 3.5 %
    of a core the planner also wants, weight 36 against 1024) with its own intra-op threads. It loads the server's
    bundle once, at the server's priority (seconds; at nice 19 a planner that never idles starved the load for
    the whole 10-minute benchmark), so the first heatmap comes that much later. Jobs and results cross a local
    pipe between the server and its own child (pickled there; no network is involved).
    """

    def __init__(
        self,
        model: RenderModel,
        nice: int = 19,
        threads: int = 1,
        start_timeout_s: float = 600.0,
        render_timeout_s: float = 120.0,
    ) -> None:
        self.model, self.nice, self.threads = model, nice, threads
        self.start_timeout_s, self.render_timeout_s = start_timeout_s, render_timeout_s
        self._proc = None
        self._conn = None
        self._lock = threading.Lock()

    def _start(self) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no copy of the server's threads or locks
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=_render_process,
            args=(child, self.model, self.nice, self.threads),
            name="vidplan-dashboard-render",
            daemon=True,
        )
        proc.start()
        child.close()
        if not parent.poll(self.start_timeout_s):
            proc.kill()
            raise TimeoutError(f"the render process did not load the model in {self.start_timeout_s:g} s")
        kind, message = parent.recv()
        if kind != "ready":
            proc.join(5)
            raise RuntimeError(f"the render process could not load the model: {message}")
        self._proc, self._conn = proc, parent

    def __call__(self, job: RenderJob) -> Rendered:
        with self._lock:
            if self._proc is None or not self._proc.is_alive():
                self._start()
            self._conn.send(job)
            if not self._conn.poll(self.render_timeout_s):
                self._stop(kill=True)
                raise TimeoutError(f"no render in {self.render_timeout_s:g} s; the render process was restarted")
            kind, payload = self._conn.recv()
        if kind != "ok":
            raise RuntimeError(payload)
        return payload

    def close(self) -> None:
        with self._lock:
            self._stop(kill=False)

    def _stop(self, kill: bool) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if proc is None:
            return
        try:
            if not kill:
                conn.send(None)
                proc.join(5)
        except (OSError, BrokenPipeError):
            pass
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        conn.close()


def reply_images(job: RenderJob) -> Rendered:
    """For planners without the stages (test doubles): the images the reply itself carried, and the views."""
    return Rendered(job.history[-1], job.predicted, job.heatmaps, None, 0.0)


class RenderWorker:
    """One daemon thread rendering the newest job of each session, at most ``rate_hz`` per session.

    ``deliver(job, rendered)`` is called on the render thread with each result; ``on_outcome(name)`` counts
    ``rendered``, ``superseded`` (dropped for a newer plan of its session) and ``failed``. ``idle()`` (optional)
    says whether the planner is idle; with ``defer_s`` > 0 a render waits for it that long at most.
    """

    def __init__(
        self,
        render: Callable[[RenderJob], Rendered],
        deliver: Callable[[RenderJob, Rendered], None],
        rate_hz: float = 2.0,
        threads: int = 1,
        nice: int = 0,
        send_grace_s: float = 0.0,
        defer_s: float = 0.0,
        idle: Callable[[], bool] | None = None,
        on_outcome: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._render, self._deliver = render, deliver
        self.min_interval_s = 1.0 / rate_hz
        self.threads = threads
        self.nice = nice
        self.send_grace_s = send_grace_s
        self.defer_s = defer_s
        self._idle = idle or (lambda: True)
        self._on_outcome = on_outcome or (lambda name: None)
        self._clock = clock
        self._cond = threading.Condition()
        self._pending: dict[str, tuple[RenderJob, float]] = {}  # key -> (newest job, when it was submitted)
        self._next_at: dict[str, float] = {}  # key -> earliest start of its next render (clock s)
        self._stopping = False
        self.busy = False  # a render is running
        self._thread: threading.Thread | None = None

    def submit(self, job: RenderJob) -> None:
        """Hand a plan over (O(1), never blocks on rendering); an unrendered older job of its session is dropped."""
        with self._cond:
            if self._stopping:
                return
            superseded = self._pending.get(job.key) is not None
            self._pending[job.key] = (job, self._clock())
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="vidplan-dashboard-render", daemon=True)
                self._thread.start()
            self._cond.notify()
        if superseded:
            self._on_outcome("superseded")

    def forget(self, key: str) -> None:
        """Nobody watches ``key`` any more: drop its waiting job (not counted: nobody would have seen it)."""
        with self._cond:
            self._pending.pop(key, None)
            self._next_at.pop(key, None)

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def close(self, timeout_s: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._pending.clear()
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        if hasattr(self._render, "close"):
            self._render.close()

    # -- the thread
    def _take(self) -> RenderJob | None:
        """The job to render next (waits for one whose session may render again); None when stopping."""
        with self._cond:
            while not self._stopping:
                now = self._clock()
                ready = [
                    (max(self._next_at.get(k, 0.0), at + self.send_grace_s), k) for k, (_, at) in self._pending.items()
                ]
                if ready:
                    start, key = min(ready)
                    if start <= now:
                        job, _ = self._pending.pop(key)
                        self._next_at[key] = now + self.min_interval_s
                        return job
                    self._cond.wait(start - now)
                else:
                    self._cond.wait()
            return None

    def _wait_idle(self) -> None:
        end = self._clock() + self.defer_s
        while not self._idle() and self._clock() < end and not self._stopping:
            time.sleep(0.005)

    def _loop(self) -> None:
        torch = sys.modules.get("torch")  # loaded by any real planner; a test double needs none
        if torch is not None:  # OpenMP's thread count is per calling thread: the planner's does not change
            torch.set_num_threads(self.threads)
        if self.nice and hasattr(os, "setpriority"):
            try:  # on Linux the "process" of setpriority is this thread (its native id)
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
            except OSError as exc:  # pragma: no cover - a platform without per-thread priorities
                log.info("dashboard render thread keeps the server's priority: %s", exc)
        while True:
            job = self._take()
            if job is None:
                return
            if self.defer_s > 0:
                self._wait_idle()
            self.busy = True
            try:
                rendered = self._render(job)
                self._deliver(job, rendered)
            except Exception as exc:  # noqa: BLE001 - a render must never take the server down
                log.warning(
                    "dashboard render of %r #%d failed: %s: %s",
                    job.key,
                    job.sequence,
                    type(exc).__name__,
                    str(exc)[:200],
                )
                self._on_outcome("failed")
            else:
                self._on_outcome("rendered")
            finally:
                self.busy = False
