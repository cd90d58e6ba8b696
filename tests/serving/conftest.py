"""Fixtures of the serving tests: a stub-planner service, and (session-wide) the real planner and a live server."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tests.serving.doubles import StubPlanner
from vidplan_server.serving.config import ServerConfig, ServiceConfig
from vidplan_server.serving.service import PlanService


@pytest.fixture
def stub():
    return StubPlanner()


@pytest.fixture
def make_service(stub):
    """``make_service(**ServiceConfig fields)`` -> a warmed-up PlanService on the stub; closed after the test."""
    made = []

    def make(**config) -> PlanService:
        service = PlanService(stub, ServiceConfig(**config))
        service.warmup()
        made.append(service)
        return service

    yield make
    for service in made:
        service.close()


class LiveServer:
    """A :class:`VidPlanServer` on ephemeral localhost ports, running its own event loop in a thread."""

    def __init__(self, service: PlanService, warmup: bool = True, **config) -> None:
        from vidplan_server.serving.server import VidPlanServer

        self.service = service
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-server-loop", daemon=True)
        self.thread.start()
        settings = dict(host="127.0.0.1", grpc_port=0, http_port=0, log_level="warning", shutdown_grace_s=10.0)
        settings.update(config)

        async def build() -> VidPlanServer:
            return VidPlanServer(service, ServerConfig(**settings))

        self.server = self.run(build())
        self.grpc_target = f"127.0.0.1:{self.server.grpc_port}"
        self.http_url = f"{'https' if self.server.config.tls else 'http'}://127.0.0.1:{self.server.http_port}"
        self._started = asyncio.run_coroutine_threadsafe(self.server.start(warmup=warmup), self.loop)

    def run(self, coro, timeout: float = 60.0):
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def wait_started(self, timeout: float = 60.0) -> LiveServer:
        self._started.result(timeout)
        return self

    def begin_shutdown(self):
        """Start the graceful shutdown; returns a concurrent future that completes when it is done."""
        return asyncio.run_coroutine_threadsafe(self.server.shutdown(), self.loop)

    def close(self) -> None:
        if self.loop.is_running():
            try:
                self.run(self.server.shutdown())
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.thread.join(10)


@pytest.fixture
def serve(stub):
    """``serve(max_queue=..., wait=..., service={ServiceConfig fields}, **ServerConfig fields)`` -> a started
    LiveServer on the stub; closed after the test."""
    made = []

    def make(max_queue: int = 4, wait: bool = True, service: dict | None = None, **config) -> LiveServer:
        server = LiveServer(PlanService(stub, ServiceConfig(max_queue=max_queue, **(service or {}))), **config)
        made.append(server)
        return server.wait_started() if wait else server

    yield make
    for server in made:
        server.close()


@pytest.fixture(scope="session")
def planner():
    """The real planner on the bundled default checkpoint (CPU), loaded once."""
    from vidplan_server.planning.planner import Planner

    return Planner.load(None, device="cpu")


@pytest.fixture(scope="session")
def live(planner):
    """One server on the real planner for the end-to-end tests (max_queue 8 so concurrent tests fit)."""
    server = LiveServer(PlanService(planner, ServiceConfig(max_queue=8))).wait_started()
    yield server
    server.close()
