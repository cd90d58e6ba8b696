"""Doubles for the load-test tests: a virtual clock for asyncio, a fake plan server on it, synthetic episodes.

:class:`VirtualClock` keeps time of its own: ``sleep_until`` parks the caller on a timer, and :meth:`VirtualClock.run`
drives a coroutine, letting every runnable task reach its next wait before moving time to the earliest timer. As
long as every wait goes through the clock, what happens is exactly what the timers say, instantly and without
depending on the machine's speed.

:class:`FakePlanServer` answers on that clock like one planner thread behind a queue: each request takes
``service_s`` after the previous one finished, a request that finds ``max_queue`` waiting is refused at once with
``RESOURCE_EXHAUSTED``; its replies are stamped as the real server stamps them (``t0_s`` = the observation's time,
``i0`` = 1) with a chunk that holds the observed pose.
"""

from __future__ import annotations

import asyncio
import heapq

import numpy as np
from vidplan_client.convert import make_observation, make_state
from vidplan_client.wire import vidplan_pb2 as pb

from tests.serving.doubles import POSE_HOME, Q_HOME
from vidplan_server.apps.loadtest.replay import EncodedEpisode
from vidplan_server.apps.loadtest.transport import Outcome

MAX_YIELDS = 10_000  # per time step; a task that never waits on the clock is a bug of the test


class VirtualClock:
    def __init__(self, start_s: float = 100.0) -> None:
        self._now = start_s
        self._timers: list[tuple[float, int, asyncio.Future]] = []
        self._seq = 0  # orders timers of the same time by when they were set

    def now(self) -> float:
        return self._now

    async def sleep_until(self, t: float) -> None:
        if t <= self._now:
            await asyncio.sleep(0)
            return
        self._seq += 1
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (t, self._seq, future))
        await future

    async def _settle(self) -> None:
        """Yield until no callback is ready to run: every task then waits on a timer of this clock (or is done).
        Reads the event loop's ready queue (CPython's ``BaseEventLoop._ready``), the one exact test of that."""
        loop = asyncio.get_running_loop()
        for _ in range(MAX_YIELDS):
            await asyncio.sleep(0)
            if not loop._ready:
                return
        raise RuntimeError("a task keeps running without waiting on the virtual clock")

    async def _drive(self, main: asyncio.Task, horizon_s: float):
        while not main.done():
            await self._settle()
            if main.done():
                break
            if not self._timers:
                raise RuntimeError("deadlock: every task waits, and no timer is set")
            t, _, future = heapq.heappop(self._timers)
            if t > horizon_s:
                raise RuntimeError(f"virtual time ran past {horizon_s} s")
            self._now = max(self._now, t)
            if not future.cancelled():
                future.set_result(None)
        return main.result()

    def run(self, coro, horizon_s: float = 1e6):
        """Run ``coro`` to completion in virtual time (at most ``horizon_s``); returns its result."""

        async def main():
            return await self._drive(asyncio.ensure_future(coro), horizon_s)

        return asyncio.run(main())


class FakePlanServer:
    """One planner behind a bounded queue, on the virtual clock; ``connect()`` gives each robot a transport."""

    def __init__(self, clock: VirtualClock, service_s: float, max_queue: int = 64, history: int = 2) -> None:
        self.clock, self.service_s, self.max_queue, self.history = clock, service_s, max_queue, history
        self.busy_until = -np.inf
        self.finishes: list[float] = []  # finish times of admitted requests
        self.requests: list[pb.PlanRequest] = []
        self.codes: dict[int, str] = {}  # sequence -> status to answer instead of a plan (scripted errors)

    def connect(self) -> FakeTransport:
        return FakeTransport(self)

    def info(self) -> pb.InfoResponse:
        return pb.InfoResponse(model_version="fake@0", history=self.history, frame_stride=3, dt_s=1 / 15)

    async def plan(self, request: pb.PlanRequest, timeout_s: float) -> Outcome:
        now = self.clock.now()
        self.requests.append(request)
        waiting = sum(1 for f in self.finishes if f - self.service_s > now)
        if waiting >= self.max_queue:
            return Outcome("RESOURCE_EXHAUSTED")
        finish = max(now, self.busy_until) + self.service_s
        self.busy_until = finish
        self.finishes = [f for f in self.finishes if f > now] + [finish]
        await self.clock.sleep_until(min(finish, now + timeout_s))
        if finish > now + timeout_s:
            return Outcome("DEADLINE_EXCEEDED")
        code = self.codes.get(request.sequence)
        if code is not None:
            return Outcome(code)
        return Outcome("OK", response=self.reply(request, now))

    def reply(self, request: pb.PlanRequest, arrived: float) -> pb.PlanResponse:
        state = request.observation.state
        row = [*state.cartesian_position, state.gripper_position]
        queue_ms = 1000.0 * (self.busy_until - self.service_s - arrived)
        return pb.PlanResponse(
            session_id=request.session_id,
            sequence=request.sequence,
            stamp=pb.ChunkStamp(t0_s=request.observation.timestamp_s, i0=1, dt_s=1 / 15),
            chunk=[pb.ActionRow(values=row) for _ in range(15)],
            timings_ms={"queue": max(queue_ms, 0.0), "plan": 1000.0 * self.service_s},
        )


class FakeTransport:
    def __init__(self, server: FakePlanServer) -> None:
        self.server = server
        self.closed = False

    async def info(self) -> pb.InfoResponse:
        return self.server.info()

    async def plan(self, request: pb.PlanRequest, timeout_s: float) -> Outcome:
        return await self.server.plan(request, timeout_s)

    async def close(self) -> None:
        self.closed = True


def synthetic_episode(steps: int = 40, name: str = "synthetic#0") -> EncodedEpisode:
    """An episode whose step ``k`` is recognisable on the wire: its gripper position is ``k / steps``."""
    rng = np.random.default_rng(steps)
    observations = []
    for k in range(steps):
        images = {c: rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) for c in pb_cameras()}
        state = make_state(Q_HOME, POSE_HOME, k / steps)
        observations.append(make_observation(images, state, 0.0))
    return EncodedEpisode(name, "put the red cube in the tray", tuple(observations))


def pb_cameras() -> tuple[str, ...]:
    from vidplan_client.contract import CAMERA_NAMES

    return CAMERA_NAMES
