"""One process, one event loop: the gRPC server and the FastAPI app (uvicorn) over one PlanService.

Life cycle::

    start      both transports listen; health NOT_SERVING, /readyz 503, plans refused (UNAVAILABLE)
    warm-up    one plan on dummy inputs on the planner thread
    serving    health SERVING, /readyz 200
    SIGTERM    health NOT_SERVING (for good) and new plans refused; in-flight plans finish
               (up to shutdown_grace_s); then uvicorn and gRPC stop and the planner thread ends
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from vidplan_server.serving.config import ServerConfig
from vidplan_server.serving.grpc_server import GrpcServer
from vidplan_server.serving.http_app import create_app
from vidplan_server.serving.service import PlanService

log = logging.getLogger(__name__)


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: :class:`VidPlanServer` owns SIGTERM / SIGINT for both transports."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


class VidPlanServer:
    """gRPC + HTTP over ``service``; ports 0 pick free ones (read :attr:`grpc_port` / :attr:`http_port`)."""

    def __init__(self, service: PlanService, config: ServerConfig = ServerConfig()) -> None:
        self.service = service
        self.config = config
        self.grpc = GrpcServer(service, config) if config.grpc_port >= 0 else None
        self.grpc_port = self.grpc.port if self.grpc else None
        # base64 JSON is 4/3 of the binary frames gRPC carries: the same images fit both transports
        self.app = create_app(
            service,
            config.token,
            max_body_bytes=config.max_message_bytes * 4 // 3,
            public_metrics=config.metrics_public,
            dashboard=config.dashboard if config.http_port >= 0 else None,
        )
        if config.dashboard_record is not None and config.dashboard is not None and config.http_port >= 0:
            from vidplan_server.serving.dashboard.monitor import DashboardMonitor
            from vidplan_server.serving.dashboard.planlog import PlanLogWriter

            DashboardMonitor.of(service).add_sink(PlanLogWriter(config.dashboard_record))
        self._http: _EmbeddedUvicorn | None = None
        self._http_socket: socket.socket | None = None
        self.http_port: int | None = None
        if config.http_port >= 0:
            # Bind here rather than in uvicorn so that port 0 works and the chosen port is known up front.
            family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((config.host, config.http_port))
            sock.set_inheritable(True)
            self._http_socket = sock
            self.http_port = sock.getsockname()[1]
            self._http = _EmbeddedUvicorn(
                uvicorn.Config(
                    self.app,
                    log_level=config.log_level,
                    access_log=False,
                    lifespan="off",
                    http="h11",  # the same HTTP parser whatever else is installed (uvicorn[standard] adds httptools)
                    # JSON logs: uvicorn's own lines go through the root logger's JSON handler too.
                    log_config=None if config.log_format == "json" else LOGGING_CONFIG,
                    ssl_certfile=str(config.tls_cert) if config.tls else None,
                    ssl_keyfile=str(config.tls_key) if config.tls else None,
                    timeout_graceful_shutdown=max(1, int(config.shutdown_grace_s)),
                )
            )
        self._http_task: asyncio.Task | None = None
        self._stopped = asyncio.Event()
        self._shutdown_task: asyncio.Task | None = None

    async def start(self, warmup: bool = True) -> None:
        """Listen on both transports, then warm the model up and report SERVING."""
        if self.grpc:
            await self.grpc.start()
        if self._http:
            self._http_task = asyncio.create_task(self._http.serve(sockets=[self._http_socket]))
            while not self._http.started:
                if self._http_task.done():  # failed to start: surface its exception
                    await self._http_task
                    raise RuntimeError("the HTTP server stopped during start-up")
                await asyncio.sleep(0.01)
        log.info("listening: gRPC %s, HTTP %s; warming up", self.grpc_port, self.http_port)
        if warmup:
            await asyncio.to_thread(self.service.warmup)
        await self.mark_serving()

    async def mark_serving(self) -> None:
        """Health SERVING (after :meth:`PlanService.warmup`)."""
        if self.grpc and self.service.warmed_up:
            await self.grpc.set_serving(True)
        log.info("ready: warmed up, health SERVING")

    async def shutdown(self) -> None:
        """Graceful stop; safe to call more than once (later calls wait for the first)."""
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.create_task(self._shutdown())
        await asyncio.shield(self._shutdown_task)

    async def _shutdown(self) -> None:
        log.info("shutting down: refusing new requests, %d in flight", self.service.in_flight)
        if self.grpc:
            await self.grpc.begin_shutdown()
        self.service.begin_shutdown()
        if not await self.service.drain(self.config.shutdown_grace_s):
            log.warning(
                "%d request(s) still in flight after %.1f s", self.service.in_flight, self.config.shutdown_grace_s
            )
        if self._http and self._http_task:
            self._http.should_exit = True
            await self._http_task
        if self.grpc:
            await self.grpc.stop(grace_s=1.0)
        await asyncio.to_thread(self.service.close)
        self._stopped.set()
        log.info("stopped")

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def serve_until_signal(self) -> None:
        """Start, then run until SIGTERM or SIGINT and shut down gracefully."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(self.shutdown()))
        try:
            await self.start()
            await self.wait_stopped()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
