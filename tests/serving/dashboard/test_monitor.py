"""The dashboard's server side on the stub planner: watching, rate limit, drop-when-behind, bounded queues, board."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import numpy as np
import pytest

from tests.serving.doubles import call
from vidplan_server.serving.dashboard.board import PlanPoint, SessionBoard
from vidplan_server.serving.dashboard.config import DashboardConfig
from vidplan_server.serving.dashboard.monitor import DashboardMonitor
from vidplan_server.serving.dashboard.planlog import PlanLogWriter, find_log, read_events
from vidplan_server.serving.dashboard.render import Rendered, RenderJob, RenderWorker


class FakeRenderer:
    """Counts renders; ``gate`` (when set) holds each render until it opens."""

    def __init__(self) -> None:
        self.jobs: list[RenderJob] = []
        self.gate: threading.Event | None = None
        self.started = threading.Event()

    def __call__(self, job: RenderJob) -> Rendered:
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        self.jobs.append(job)
        frames = np.full((5, 3, 8, 8, 3), 200, np.uint8)
        return Rendered(job.history[-1], frames, frames, frames, 1.0)


def _monitor(service, **config) -> tuple[DashboardMonitor, FakeRenderer]:
    renderer = FakeRenderer()
    settings = dict(send_grace_s=0.0)
    settings.update(config)
    return DashboardMonitor(service, DashboardConfig(**settings), render=renderer), renderer


async def _drain(sub, timeout_s: float = 5.0, until=None) -> list[dict]:
    """Events of ``sub`` until ``until(event)`` is true (or the queue stays empty for 0.3 s)."""
    events = []
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            event = await asyncio.wait_for(sub.queue.get(), 0.3 if until is None else end - time.monotonic())
        except TimeoutError:
            break
        events.append(event)
        if until is not None and until(event):
            break
    return events


def test_nothing_is_rendered_for_sessions_nobody_watches(make_service):
    service = make_service()
    monitor, renderer = _monitor(service)

    async def run():
        for i in range(1, 4):
            await service.plan(call(sequence=i, t=float(i), session="robot-a"))
        await asyncio.sleep(0.2)

    asyncio.run(run())
    assert renderer.jobs == [] and sum(monitor.render_counts.values()) == 0
    row = monitor.board.summaries(time.time())[0]
    assert row["id"] == "robot-a" and row["plans"] == 3 and row["p50_ms"] is not None and not row["stale"]


def test_a_watcher_gets_the_sessions_plans_and_heatmaps_and_no_other_sessions(make_service):
    service = make_service()
    monitor, renderer = _monitor(service)

    async def run():
        await service.plan(call(sequence=1, t=1.0, session="robot-a"))
        sub = monitor.subscribe("robot-a")
        first = await _drain(sub, until=lambda e: e["type"] == "render")
        await service.plan(call(sequence=1, t=1.0, session="robot-b"))
        await service.plan(call(sequence=2, t=2.0, session="robot-a"))
        later = await _drain(sub, until=lambda e: e["type"] == "render" and e["sequence"] == 2)
        monitor.unsubscribe(sub)
        return first, later

    first, later = asyncio.run(run())
    assert [e["type"] for e in first] == ["hello", "snapshot", "history", "plan", "render"]
    assert first[3]["sequence"] == 1 and first[4]["latent"].startswith("data:image/png;base64,")
    assert {e.get("session") for e in later if e["type"] in ("plan", "render")} == {"robot-a"}
    assert [j.key for j in renderer.jobs] == ["robot-a", "robot-a"]  # robot-b: nobody watches it
    assert monitor.watched == set()


def test_renders_are_rate_limited_per_session_and_the_newest_plan_wins():
    rendered: list[tuple[int, float]] = []
    done = threading.Event()

    def render(job):
        rendered.append((job.sequence, time.monotonic()))
        if job.sequence == 20:
            done.set()
        return Rendered(None, None, None, None, 0.0)

    outcomes: list[str] = []
    worker = RenderWorker(render, lambda job, r: None, rate_hz=5.0, on_outcome=outcomes.append)
    try:
        t0 = time.monotonic()
        for i in range(1, 21):  # 20 plans in ~0.4 s: at 5 Hz about 3 renders, the last plan among them
            worker.submit(RenderJob("a", i, 0.0, np.zeros((2, 3, 4, 4, 3), np.uint8), np.zeros((15, 7)), 0, 1))
            time.sleep(0.02)
        submitting_s = time.monotonic() - t0  # ~0.4 s, longer on a loaded machine
        assert done.wait(5)
    finally:
        worker.close()
    starts = [t for _, t in rendered]
    assert 2 <= len(rendered) <= 2 + submitting_s * 5.0 and rendered[-1][0] == 20
    assert min(np.diff(starts)) >= 0.2 - 0.01  # never faster than render_hz
    assert outcomes.count("superseded") == 20 - len(rendered) and outcomes.count("rendered") == len(rendered)


def test_a_renderer_that_falls_behind_drops_older_plans_and_never_delays_a_reply(make_service):
    service = make_service()
    monitor, renderer = _monitor(service, render_hz=100.0)
    renderer.gate = threading.Event()

    async def run():
        sub = monitor.subscribe("robot-a")
        await service.plan(call(sequence=1, t=1.0, session="robot-a"))
        assert await asyncio.to_thread(renderer.started.wait, 5)  # rendering plan 1, held by the gate
        stuck_while_replying = []
        for i in range(2, 6):  # replies come back although the renderer is stuck on plan 1
            await service.plan(call(sequence=i, t=float(i), session="robot-a"))
            stuck_while_replying.append(not renderer.gate.is_set())
        assert monitor.renderer.pending == 1  # only the newest plan waits
        renderer.gate.set()
        events = await _drain(sub, until=lambda e: e["type"] == "render" and e["sequence"] == 5)
        monitor.unsubscribe(sub)
        return stuck_while_replying, events

    stuck_while_replying, events = asyncio.run(run())
    assert stuck_while_replying == [True] * 4
    assert [j.sequence for j in renderer.jobs] == [1, 5]  # 2, 3 and 4 were dropped, not queued
    assert monitor.render_counts["superseded"] == 3
    assert [e["sequence"] for e in events if e["type"] == "render"] == [1, 5]


def test_a_browser_that_stops_reading_is_bounded_then_dropped(make_service):
    service = make_service()
    monitor, renderer = _monitor(service, send_queue=4, stall_s=0.2)

    async def run():
        sub = monitor.subscribe("robot-a")  # never read
        for i in range(1, 9):
            await service.plan(call(sequence=i, t=float(i), session="robot-a"))
            assert sub.queue.qsize() <= 4
            await asyncio.sleep(0.05)
        return sub

    sub = asyncio.run(run())
    assert sub.dropped > 0 and sub.closed  # dropped once its queue stayed full for stall_s
    assert monitor.watched == set() and monitor.server_panel(time.time())["watchers"] == 0


def test_plans_after_the_last_watcher_left_are_not_rendered(make_service):
    service = make_service()
    monitor, renderer = _monitor(service)

    async def run():
        sub = monitor.subscribe("robot-a")
        await service.plan(call(sequence=1, t=1.0, session="robot-a"))
        await _drain(sub, until=lambda e: e["type"] == "render")
        monitor.unsubscribe(sub)
        for i in range(2, 5):
            await service.plan(call(sequence=i, t=float(i), session="robot-a"))
        await asyncio.sleep(0.2)

    asyncio.run(run())
    assert [j.sequence for j in renderer.jobs] == [1]


def test_watchers_are_limited(make_service):
    service = make_service()
    monitor, _ = _monitor(service, max_watchers=2)
    from vidplan_server.serving.errors import Overloaded

    async def run():
        monitor.subscribe(None)
        monitor.subscribe("x")
        with pytest.raises(Overloaded):
            monitor.subscribe("y")

    asyncio.run(run())


def test_the_server_panel_counts_rejects_and_queue(make_service):
    service = make_service()
    monitor, _ = _monitor(service)
    service.count("http", "plan", "overloaded")
    service.count("grpc", "plan", "invalid_argument")
    service.count("grpc", "plan", "invalid_argument")
    panel = monitor.server_panel(time.time())
    assert panel["rejects"]["overloaded"] == 1 and panel["rejects"]["bad input"] == 2
    assert panel["queue_depth"] == 0 and panel["max_queue"] == service.config.max_queue


def test_board_sorts_by_attention_and_greys_out_stale_sessions():
    board = SessionBoard(history_s=300, stale_s=10)
    now = 1000.0
    for i in range(5):
        board.record("calm", i, "pick", PlanPoint(now - 5 + i, 100.0, 0.95, 0.2, False))
        board.record("unsure", i, "pick", PlanPoint(now - 5 + i, 100.0, 0.30, 0.6, False))
        board.record("slow", i, "pick", PlanPoint(now - 5 + i, 1900.0, 0.95, 0.2, i == 4))
        board.record("gone", i, "pick", PlanPoint(now - 60 + i, 100.0, 0.10, 0.9, False))
    rows = board.summaries(now)
    assert [r["id"] for r in rows] == ["slow", "unsure", "calm", "gone"]
    assert rows[-1]["stale"] and not rows[0]["stale"] and rows[0]["deadline_hits"] == 1
    assert rows[0]["p95_ms"] == pytest.approx(1900.0) and rows[2]["confidence_trend"] == [0.95] * 5
    board.expire(now + 290)  # "gone"'s plans are older than history_s by then
    assert "gone" not in board and "calm" in board
    assert board.history("calm")[-1] == [now - 1, 0.95, 0.2, 100.0]


def test_a_plan_log_records_every_session_with_heatmaps(make_service, tmp_path):
    service = make_service()
    monitor, _ = _monitor(service)
    writer = PlanLogWriter(tmp_path / "run" / "planlog.jsonl")
    monitor.add_sink(writer)

    async def run():
        for i in range(1, 3):
            await service.plan(call(sequence=i, t=float(i), session="robot-a"))
            await service.plan(call(sequence=i, t=float(i), session="robot-b"))
            await asyncio.sleep(0.3)

    asyncio.run(run())
    monitor.close()
    events = list(read_events(find_log(tmp_path / "run")))
    kinds = [e["type"] for e in events]
    assert kinds[0] == "hello" and "snapshot" in kinds
    assert {(e["session"], e["sequence"]) for e in events if e["type"] == "plan"} == {
        ("robot-a", 1),
        ("robot-b", 1),
        ("robot-a", 2),
        ("robot-b", 2),
    }
    assert {e["session"] for e in events if e["type"] == "render"} == {"robot-a", "robot-b"}


def test_the_event_stream_needs_the_token_and_the_page_does_not(serve):
    server = serve(token="s3cret")
    with httpx.Client(base_url=server.http_url, timeout=10) as http:
        page = http.get("/dashboard")
        assert page.status_code == 200 and "VidPlan" in page.text
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert http.get("/dashboard/api/config").json() == {"mode": "live", "auth": True}
        refused = http.get("/dashboard/api/events")
        assert refused.status_code == 401 and refused.json()["error"]["field"] == "authorization"
        assert http.get("/dashboard/api/events", headers={"authorization": "Bearer wrong"}).status_code == 401
        with http.stream("GET", "/dashboard/api/events", headers={"authorization": "Bearer s3cret"}) as stream:
            assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
            first = next(stream.iter_lines())
            assert first.startswith("data:") and '"type":"hello"' in first
        assert "/dashboard" not in str(http.get("/openapi.json").json()["paths"])


def test_memory_is_bounded_by_the_boards_sessions(make_service):
    service = make_service()
    monitor, _ = _monitor(service, max_sessions=3)

    async def run():
        for i in range(10):  # ten short-lived sessions (e.g. streams without a session id)
            await service.plan(call(sequence=1, t=1.0, session=f"s{i}"))

    asyncio.run(run())
    assert len(monitor.board) == 3 and set(monitor._last) == {"s7", "s8", "s9"}
