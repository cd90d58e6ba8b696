"""The dashboard's server side: it watches the plan service and feeds browsers (and plan logs) their events.

:class:`DashboardMonitor` is an observer of :class:`~vidplan_server.serving.service.PlanService`: the service calls
:meth:`DashboardMonitor.on_plan` on its event loop once a plan's reply is ready. That call is O(1) bookkeeping --
the session board gets one point; for a watched session the plan's figures go to its watchers and the plan goes
to the render thread (:mod:`.render`) -- and never waits for anything. Nothing is rendered for a session nobody
watches.

Browsers subscribe (:meth:`DashboardMonitor.subscribe`, one :class:`Subscription` per connection, watching at
most one session) and read their events from a bounded queue: an event that does not fit is dropped for that
browser, and a browser whose queue stayed full for ``stall_s`` (closed, or too slow to read) is dropped, so it no
longer costs renders. A plan log writer (:mod:`.planlog`) is a watcher of every session.

Threads: everything here runs on the server's event loop except the render thread, whose results come back
through ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge, Histogram

from vidplan_server.serving.dashboard.board import PlanPoint, SessionBoard
from vidplan_server.serving.dashboard.config import DashboardConfig
from vidplan_server.serving.dashboard.events import plan_event, render_event
from vidplan_server.serving.dashboard.render import (
    PlanRenderer,
    ProcessRenderer,
    Rendered,
    RenderJob,
    RenderWorker,
    reply_images,
)
from vidplan_server.serving.errors import Overloaded
from vidplan_server.serving.messages import PlanReply

if TYPE_CHECKING:
    from vidplan_server.serving.service import PlanService, Prepared

log = logging.getLogger(__name__)

#: The board's key of plans sent without a session id.
ANONYMOUS = "(no session)"
#: Request outcomes the server panel counts as rejects, by the panel's name.
REJECTS = {
    "overloaded": "overloaded",
    "invalid_argument": "bad input",
    "deadline_exceeded": "deadline",
    "unauthenticated": "unauthenticated",
    "no_safe_plan": "no safe plan",
    "unavailable": "unavailable",
    "error": "error",
}


class EventSink(Protocol):
    """Something that takes every event of every session (a plan log)."""

    def offer(self, event: dict) -> None: ...
    def close(self) -> None: ...


class Subscription:
    """One browser's view: the session it watches (or None) and its bounded queue of events."""

    def __init__(self, watch: str | None, maxsize: int) -> None:
        self.watch = watch
        self.queue: asyncio.Queue[dict] = asyncio.Queue(maxsize)
        self.dropped = 0
        self.full_since: float | None = None  # monotonic s since the queue has been full
        self.closed = False

    def offer(self, event: dict, now: float) -> bool:
        """Queue ``event`` unless the queue is full (then it is dropped and counted)."""
        if self.closed:
            return False
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.full_since is None:
                self.full_since = now
            return False
        self.full_since = None
        return True


class DashboardMonitor:
    """Session board, watchers, render thread and event fan-out of one plan service (module docstring)."""

    def __init__(
        self,
        service: PlanService,
        config: DashboardConfig = DashboardConfig(),
        render: Callable[[RenderJob], Rendered] | None = None,
        auth: bool = False,
        clock: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.config = config
        self.auth = auth
        self.clock, self.mono = clock, mono
        self.board = SessionBoard(config.history_s, config.stale_s, config.max_sessions)
        if render is None and config.render_model is not None:
            render = ProcessRenderer(config.render_model, config.render_nice, config.render_threads)
        elif render is None:
            render = PlanRenderer(service.planner) if PlanRenderer.supports(service.planner) else reply_images
        worker = service.worker
        self.renderer = RenderWorker(
            render,
            self._rendered,
            rate_hz=config.render_hz,
            threads=config.render_threads,
            # With a render process the thread only waits for it and encodes PNGs: a niced thread holding the
            # interpreter lock for that would make the planner wait for it.
            nice=0 if isinstance(render, ProcessRenderer) else config.render_nice,
            send_grace_s=config.send_grace_s,
            defer_s=config.defer_s,
            idle=lambda: worker.running == 0 and worker.waiting == 0,
            on_outcome=self._count_render,
            clock=mono,
        )
        self.sinks: list[EventSink] = []
        self._subs: set[Subscription] = set()
        self._watchers: Counter[str] = Counter()
        self._last: dict[str, tuple[RenderJob, str, PlanReply]] = {}  # key -> the newest plan (bounded by the board)
        self._last_render: dict[str, dict] = {}  # key -> newest render event, watched sessions only
        self._loop: asyncio.AbstractEventLoop | None = None
        self._snapshot: tuple[float, dict] | None = None
        self._sink_snapshot_at = -float("inf")
        registry = service.metrics.registry
        self.m_watchers = Gauge("vidplan_dashboard_watchers", "Dashboard browsers connected.", registry=registry)
        self.m_renders = PromCounter(
            "vidplan_dashboard_renders",
            "Heatmap renders of watched sessions by outcome (rendered, superseded: dropped for a newer plan, failed).",
            ["outcome"],
            registry=registry,
        )
        self.m_render_s = Histogram(
            "vidplan_dashboard_render_seconds",
            "Time of one heatmap render (s).",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
            registry=registry,
        )
        self.m_dropped = PromCounter(
            "vidplan_dashboard_events_dropped", "Events dropped for a browser that did not keep up.", registry=registry
        )
        # Keys made up front: the render thread only updates values, so the event loop can copy it any time.
        self.render_counts: Counter[str] = Counter({"rendered": 0, "superseded": 0, "failed": 0})
        self.render_ms: list[float] = []  # the last renders' times, for the server panel
        service.observers.append(self)

    @classmethod
    def of(
        cls, service: PlanService, config: DashboardConfig = DashboardConfig(), auth: bool = False
    ) -> DashboardMonitor:
        """The service's monitor, made on first use (its metrics live in the service's registry, once)."""
        for observer in service.observers:
            if isinstance(observer, cls):
                return observer
        return cls(service, config, auth=auth)

    # ------------------------------------------------------------------------------------------- the service side
    def on_plan(self, prepared: Prepared, reply: PlanReply) -> None:
        """A plan's reply is ready (called on the event loop by the service): O(1), never waits."""
        if self._loop is None:
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:
                pass
        key = prepared.call.session_id or ANONYMOUS
        r = reply.result
        t = self.clock()
        options = prepared.checked.options
        uncertainty = np.asarray(r.uncertainty, dtype=np.float64)
        self.board.record(
            key,
            reply.sequence,
            prepared.checked.instruction,
            PlanPoint(
                t=t,
                latency_ms=float(reply.timings_ms.get("total", 0.0)),
                confidence=float(r.confidence),
                uncertainty=float(uncertainty.mean()) if uncertainty.size else None,
                deadline_hit=bool(r.deadline_hit),
            ),
        )
        job = RenderJob(
            key=key,
            sequence=reply.sequence,
            t=t,
            history=prepared.history,
            actions=r.actions,
            seed=options.seed,
            flow_steps=options.flow_steps,
            predicted=r.predicted_frames,
            heatmaps=r.heatmaps,
            has_rollout=options.mode != "policy" and uncertainty.size > 0,
        )
        self._last[key] = (job, prepared.checked.instruction, reply)
        if len(self._last) > self.board.max_sessions:  # sessions the board dropped (e.g. many short streams)
            for gone in [k for k in self._last if k not in self.board]:
                del self._last[gone]
        if self._watchers.get(key, 0) > 0 or self.sinks:
            self._publish(plan_event(key, prepared.checked.instruction, reply, t), key)
            self.renderer.submit(job)
        if self.sinks and self.mono() - self._sink_snapshot_at >= 1.0 / self.config.snapshot_hz:
            self._sink_snapshot_at = self.mono()
            snapshot = self.snapshot()
            for sink in self.sinks:
                sink.offer(snapshot)

    def add_sink(self, sink: EventSink) -> None:
        """Send every event of every session to ``sink`` too (a plan log): all sessions count as watched."""
        sink.offer(self.hello())
        self.sinks.append(sink)

    def close(self) -> None:
        self.renderer.close()
        for sink in self.sinks:
            sink.close()
        for sub in list(self._subs):
            self.unsubscribe(sub)

    # ------------------------------------------------------------------------------------------- the browser side
    def hello(self, mode: str = "live") -> dict:
        m = self.service.model
        return {
            "type": "hello",
            "mode": mode,
            "auth": self.auth,
            "render_hz": self.config.render_hz,
            "stale_s": self.config.stale_s,
            "history_s": self.config.history_s,
            "model": {
                "model_version": m.model_version,
                "cameras": list(m.cameras),
                "horizon": m.horizon,
                "frame_dt_s": round(m.frame_stride * m.dt_s, 4),
                "image_size": list(m.image_size),
                "device": m.device,
            },
        }

    def subscribe(self, watch: str | None = None) -> Subscription:
        """A new browser connection watching ``watch`` (a session on the board, or None); Overloaded past
        ``max_watchers``. Its queue starts with hello, a snapshot and, for a watched session, what is known."""
        self._loop = asyncio.get_running_loop()
        if len(self._subs) >= self.config.max_watchers:
            raise Overloaded(
                f"{len(self._subs)} dashboard browsers are connected, the limit is {self.config.max_watchers}",
                retry_after_s=5.0,
            )
        sub = Subscription(watch or None, self.config.send_queue)
        self._subs.add(sub)
        self.m_watchers.set(len(self._subs))
        now = self.mono()
        sub.offer(self.hello(), now)
        sub.offer(self.snapshot(), now)
        if sub.watch is not None:
            key = sub.watch
            self._watchers[key] += 1
            sub.offer({"type": "history", "session": key, "points": self.board.history(key)}, now)
            last = self._last.get(key)
            if last is not None:
                job, instruction, reply = last
                sub.offer(plan_event(key, instruction, reply, job.t), now)
                shown = self._last_render.get(key)
                if shown is not None and shown["sequence"] == job.sequence:
                    sub.offer(shown, now)
                else:
                    self.renderer.submit(job)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub not in self._subs:
            return
        sub.closed = True
        self._subs.discard(sub)
        self.m_watchers.set(len(self._subs))
        key = sub.watch
        if key is not None:
            self._watchers[key] -= 1
            if self._watchers[key] <= 0:
                del self._watchers[key]
                if not self.sinks:
                    self.renderer.forget(key)
                self._last_render.pop(key, None)

    @property
    def watched(self) -> set[str]:
        """Sessions at least one browser watches."""
        return {key for key, n in self._watchers.items() if n > 0}

    async def events(self, sub: Subscription) -> AsyncIterator[dict]:
        """The events of ``sub`` in order, with a fresh snapshot every 1 / snapshot_hz s; ends when it is closed or
        the server shuts down (within a snapshot period, so that an open browser never holds up a shutdown)."""
        period = 1.0 / self.config.snapshot_hz
        next_snapshot = self.mono() + period
        while not sub.closed and self.service.accepting:
            wait = next_snapshot - self.mono()
            if wait <= 0:
                sub.offer(self.snapshot(), self.mono())
                next_snapshot = self.mono() + period
                continue
            try:
                event = await asyncio.wait_for(sub.queue.get(), min(wait, 0.25))
            except TimeoutError:
                continue
            yield event

    def snapshot(self) -> dict[str, Any]:
        """The session list and the server panel (computed at most every 0.2 s, shared by all browsers)."""
        now_mono = self.mono()
        if self._snapshot is not None and now_mono - self._snapshot[0] < 0.2:
            return self._snapshot[1]
        now = self.clock()
        sessions = self.board.summaries(now)
        for key in set(self._last) - set(self.board.keys()):  # the board forgot it: so do we
            del self._last[key]
        for row in sessions:
            row["watched"] = self._watchers.get(row["id"], 0)
        event = {"type": "snapshot", "t": round(now, 3), "sessions": sessions, "server": self.server_panel(now)}
        self._snapshot = (now_mono, event)
        self._drop_stalled(now_mono)
        return event

    def server_panel(self, now: float) -> dict[str, Any]:
        service = self.service
        outcomes: Counter[str] = Counter()
        for metric in service.metrics.requests.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    outcomes[sample.labels["outcome"]] += int(sample.value)
        recent = self.render_ms[-50:]
        return {
            **self.board.server(now),
            "queue_depth": service.worker.waiting,
            "max_queue": service.worker.max_queue,
            "running": service.worker.running,
            "in_flight": service.in_flight,
            "ok": outcomes.get("ok", 0),
            "rejects": {name: outcomes.get(outcome, 0) for outcome, name in REJECTS.items()},
            "watchers": len(self._subs),
            "watched_sessions": len(self.watched),
            "renders": dict(self.render_counts),
            "render_p50_ms": round(float(np.median(recent)), 1) if recent else None,
            "ready": service.ready,
        }

    # ------------------------------------------------------------------------------------------- internals
    def _publish(self, event: dict, key: str) -> None:
        now = self.mono()
        for sub in list(self._subs):
            if sub.watch == key and not sub.offer(event, now):
                self.m_dropped.inc()
        for sink in self.sinks:
            sink.offer(event)
        self._drop_stalled(now)

    def _drop_stalled(self, now: float) -> None:
        for sub in list(self._subs):
            if sub.full_since is not None and now - sub.full_since > self.config.stall_s:
                log.warning("dashboard: dropping a browser that read nothing for %.0f s", now - sub.full_since)
                self.unsubscribe(sub)

    def _rendered(self, job: RenderJob, rendered: Rendered) -> None:
        """On the render thread: encode the images, then hand the event to the event loop."""
        event = render_event(
            job.key,
            job.sequence,
            job.t,
            rendered.views,
            rendered.predicted,
            rendered.latent,
            rendered.pixel,
            rendered.render_ms,
            self.service.cameras,
        )
        self.m_render_s.observe(rendered.render_ms / 1e3)
        for sink in self.sinks:
            sink.offer(event)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._show_render, event, rendered.render_ms)
            except RuntimeError:  # the loop closed meanwhile (shutdown)
                pass

    def _show_render(self, event: dict, render_ms: float) -> None:
        key = event["session"]
        self.render_ms = [*self.render_ms[-99:], render_ms]
        if self._watchers.get(key, 0) <= 0:
            return
        self._last_render[key] = event
        now = self.mono()
        for sub in list(self._subs):
            if sub.watch == key and not sub.offer(event, now):
                self.m_dropped.inc()

    def _count_render(self, outcome: str) -> None:
        self.render_counts[outcome] += 1
        self.m_renders.labels(outcome=outcome).inc()
