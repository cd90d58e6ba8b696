"""The robots' event loop: R :class:`~vidplan_server.apps.loadtest.replay.ReplayRobot` coroutines for one run.

Robot ``k`` of R starts ``k / R`` of a re-planning interval after the first (staggered, so their requests do not
arrive in lockstep), replays episode ``k mod E`` (robots sharing an episode start at different steps), and ticks
at the control rate until the run's end: at each tick it is at the next step of its episode and, when a plan is
due, sends the request of that tick as a task of its own (the robot keeps ticking meanwhile). A tick that could
not run on time is skipped, never made up for in a burst (as ``RobotLoop`` does). At the end each robot waits
for its request in flight at most until that request's timeout, then gives up on it, so a run lasts at most
``duration_s + timeout_s`` (plus the stagger). All waits go through the injected :class:`Clock`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from vidplan_server.apps.loadtest.clock import Clock
from vidplan_server.apps.loadtest.replay import EncodedEpisode, ReplayRobot, RobotSettings
from vidplan_server.apps.loadtest.stats import LatencyRecorder
from vidplan_server.apps.loadtest.transport import Outcome, PlanTransport

log = logging.getLogger(__name__)

CLIENT_ERROR = "CLIENT_ERROR"  # the load generator's own failure (a bug), counted like a status
PROGRESS_EVERY_S = 0.5
_SAME_EPISODE_OFFSET = 37  # steps between robots that replay the same episode


def make_robots(
    count: int, episodes: Sequence[EncodedEpisode], settings: RobotSettings, start_s: float, session_prefix: str
) -> list[ReplayRobot]:
    """``count`` robots, staggered over one re-planning interval, over ``episodes`` in turn."""
    interval = settings.open_loop_horizon * settings.dt_s
    robots = []
    for k in range(count):
        episode = episodes[k % len(episodes)]
        start_step = (k // len(episodes)) * _SAME_EPISODE_OFFSET % len(episode)
        session = f"{session_prefix}-r{k}"
        robots.append(ReplayRobot(k, episode, session, settings, start_s + k * interval / count, start_step))
    return robots


async def _send(
    robot: ReplayRobot,
    request,
    transport: PlanTransport,
    clock: Clock,
    recorder: LatencyRecorder,
    timeout_s: float,
) -> None:
    sent = clock.now()
    try:
        outcome = await transport.plan(request, timeout_s)
    except asyncio.CancelledError:
        raise
    except Exception:  # never let one robot's bug stop the others; count it and say it once per kind
        log.exception("robot %d: the plan call raised", robot.index)
        outcome = Outcome(CLIENT_ERROR)
    done = clock.now()
    use = robot.answer(done, outcome.response if outcome.ok else None)
    recorder.record(robot.index, sent, done, outcome, use)


async def run_robot(
    robot: ReplayRobot,
    transport: PlanTransport,
    clock: Clock,
    recorder: LatencyRecorder,
    stop_s: float,
    timeout_s: float,
) -> int:
    """Tick ``robot`` until ``stop_s``; returns the number of ticks it ran (skipped ones not counted)."""
    dt = robot.settings.dt_s
    tick, ran = 0, 0
    in_flight: set[asyncio.Task] = set()
    while robot.tick_time(tick) < stop_s:
        await clock.sleep_until(robot.tick_time(tick))
        late = int((clock.now() - robot.tick_time(tick)) / dt)
        if late >= 1:  # this robot fell behind (a busy loop): skip to the tick of now, no burst
            tick += late
            if robot.tick_time(tick) >= stop_s:
                break
        ran += 1
        if robot.due(tick):
            task = asyncio.create_task(_send(robot, robot.request(tick), transport, clock, recorder, timeout_s))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        tick += 1
    give_up = clock.now() + timeout_s
    while in_flight and clock.now() < give_up:
        await clock.sleep_until(min(clock.now() + 0.05, give_up))
    for task in list(in_flight):
        task.cancel()
    if in_flight:
        await asyncio.gather(*in_flight, return_exceptions=True)
    return ran


async def run_robots(
    count: int,
    episodes: Sequence[EncodedEpisode],
    settings: RobotSettings,
    open_transport: Callable[[], PlanTransport],
    clock: Clock,
    duration_s: float,
    warmup_s: float,
    timeout_s: float,
    budget_ms: float,
    session_prefix: str,
    on_progress: Callable[[float, LatencyRecorder], None] | None = None,
) -> tuple[LatencyRecorder, list[int]]:
    """One run of ``count`` robots for ``duration_s``; returns its recorder and each robot's tick count."""
    start = clock.now()
    interval = settings.open_loop_horizon * settings.dt_s
    recorder = LatencyRecorder(start, warmup_s, interval, budget_ms)
    robots = make_robots(count, episodes, settings, start, session_prefix)
    transports = [open_transport() for _ in robots]
    stop = start + duration_s
    try:
        tasks = [
            asyncio.create_task(run_robot(robot, transport, clock, recorder, stop, timeout_s))
            for robot, transport in zip(robots, transports, strict=True)
        ]
        if on_progress is not None:
            reporter = asyncio.create_task(_report_progress(clock, start, stop, recorder, on_progress))
        ticks = await asyncio.gather(*tasks)
        if on_progress is not None:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
            on_progress(clock.now() - start, recorder)
    finally:
        for transport in transports:
            await transport.close()
    return recorder, list(ticks)


async def _report_progress(
    clock: Clock, start: float, stop: float, recorder: LatencyRecorder, on_progress: Callable
) -> None:
    t = start
    while t < stop:
        t = min(t + PROGRESS_EVERY_S, stop)
        await clock.sleep_until(t)
        on_progress(clock.now() - start, recorder)
