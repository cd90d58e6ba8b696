"""Scale-out on Ray Serve: the transport-free :class:`PlanService` as a Serve deployment.

Each replica loads the planner, warms it up and runs one :class:`PlanService` (its planner thread, bounded queue
and sessions), exactly as ``vidplan serve`` does in one process. Serve owns the network:

- HTTP through Serve's proxy into the replica's own FastAPI app (:func:`~vidplan_server.serving.http_app.create_app`
  via ``serve.ingress``): the same routes, errors, token and OpenAPI schema (the operator dashboard stays with
  ``vidplan serve``: a replica sees only its own sessions);
- gRPC through Serve's gRPC proxy (``grpc_servicer_functions``: :mod:`~vidplan_server.serving.ray_grpc`, the
  VidPlan service with raw-bytes requests), into :meth:`VidPlanReplica.Plan`, :meth:`~VidPlanReplica.StreamPlan`
  and :meth:`~VidPlanReplica.GetInfo`, which parse, convert and delegate like the one-process servicer. Serve's
  proxy has no ``grpc.health.v1``: probes use its ``/ray.serve.RayServeAPIService/Healthz`` or HTTP
  ``/-/healthz``.

Routing, scaling and backpressure:

- ``max_ongoing_requests`` per replica is the service's own capacity (one plan running + ``max_queue`` waiting),
  so Serve sends a replica only what it can hold and spreads the rest; past that Serve holds ``ray_max_queued``
  requests for the first free replica and refuses more at once: HTTP 503, gRPC RESOURCE_EXHAUSTED (as the
  one-process server answers a full queue).
- Autoscaling on ongoing requests per replica (``ray_target_ongoing``) between ``ray_min_replicas`` (at least 1:
  a robot's planner never scales to zero and never cold-starts under a robot) and ``ray_max_replicas``.
- Stateless ``Plan``: a request that carries its history (the robot client's carried history, up to
  ``max_history`` observations) can be answered by any replica. A request that relies on server-side session
  history reaches a random replica, which may not hold that session (it then plans from the frames it has, as
  after a server restart); robots behind Ray Serve should carry their history. A ``StreamPlan`` stream stays on
  the replica that opened it for its whole life (its session with it) and holds one of its ongoing slots.
- Each replica answers with its id (gRPC trailing metadata and HTTP header ``x-vidplan-replica``), for operators
  and for the tests that check the spreading.

Start it locally with ``vidplan serve --ray`` (:func:`serve_until_signal`) or ``serve run deploy/ray/serve.yaml``
(:func:`app_builder`); on Kubernetes with KubeRay's ``RayService`` (``deploy/ray/rayservice.yaml``).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Mapping
from typing import Any

from vidplan_client.wire import vidplan_pb2 as pb

from vidplan_server.serving import grpc_convert as convert
from vidplan_server.serving.errors import Overloaded, ServingError, Unauthenticated, bearer_token_matches, outcome_of
from vidplan_server.serving.settings import ServeSettings, load_settings

#: The generated function Serve's gRPC proxy registers the VidPlan service with.
GRPC_SERVICER_FUNCTION = "vidplan_server.serving.ray_grpc.add_VidPlanServicer_to_server"
APP_NAME = "vidplan"
DEPLOYMENT_NAME = "VidPlan"
REPLICA_HEADER = "x-vidplan-replica"

log = logging.getLogger(__name__)


def _grpc_status(error: ServingError):
    import grpc

    return grpc.StatusCode[error.code]


class VidPlanReplica:
    """One Serve replica: a warmed-up :class:`PlanService`; gRPC methods here, HTTP through its FastAPI app.

    ``settings``: :class:`ServeSettings` fields (all but the token, which each replica reads from its own
    ``VIDPLAN_TOKEN``, so that it never travels in Serve's deployment config)."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        from vidplan_server.planning.planner import Planner
        from vidplan_server.serving.service import PlanService

        self.settings = load_settings(settings)
        server_config, service_config = self.settings.configs()
        self.server_config = server_config
        planner = Planner.load(self.settings.ckpt, device=self.settings.device, config=self.settings.planner_config())
        self.service = PlanService(planner, service_config)
        self.service.warmup()
        self.cameras = list(self.service.cameras)
        self.token = server_config.token
        try:
            from ray import serve

            self.replica_id = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 - outside a Serve replica (unit tests)
            self.replica_id = f"local-{os.getpid()}"
        log.info("replica %s ready: model %s", self.replica_id, self.service.model.model_version)

    # ------------------------------------------------------------------ HTTP (serve.ingress)
    def __serve_build_asgi_app__(self):
        """The same FastAPI app ``vidplan serve`` runs, on this replica's service, plus the replica header."""
        from vidplan_server.serving.http_app import create_app

        config = self.server_config
        app = create_app(
            self.service,
            config.token,
            max_body_bytes=config.max_message_bytes * 4 // 3,
            public_metrics=config.metrics_public,
            dashboard=None,
        )
        replica = self.replica_id.encode()

        async def with_replica_header(scope, receive, send):
            async def send_with_header(message):
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", ()), (REPLICA_HEADER.encode(), replica)]}
                await send(message)

            await app(scope, receive, send_with_header)

        return with_replica_header

    # ------------------------------------------------------------------ gRPC (Serve's gRPC proxy)
    def _authorized(self, grpc_context, call: str) -> ServingError | None:
        if not self.token:
            return None
        metadata = dict(grpc_context.invocation_metadata() or ()) if grpc_context is not None else {}
        if bearer_token_matches(metadata.get("authorization"), self.token):
            return None
        self.service.count("grpc", call, "unauthenticated")
        self.service.log.warning(("grpc", "unauthenticated"), f"refused a gRPC {call} call without a valid token")
        return Unauthenticated("missing or wrong bearer token", field="authorization")

    def _fail(self, grpc_context, error: ServingError, empty):
        """Set the error's status on the call and answer ``empty`` (Serve sends the status, not the message)."""
        if grpc_context is not None:
            metadata = [(REPLICA_HEADER, self.replica_id)]
            if isinstance(error, Overloaded):
                metadata.append(("retry-after", str(int(error.retry_after_s))))
            grpc_context.set_trailing_metadata(metadata)
            grpc_context.set_code(_grpc_status(error))
            grpc_context.set_details(str(error))
        return empty

    def _ok(self, grpc_context, response):
        if grpc_context is not None:
            grpc_context.set_trailing_metadata([(REPLICA_HEADER, self.replica_id)])
        return response

    async def Plan(self, data: bytes, grpc_context=None) -> pb.PlanResponse:  # noqa: N802 - the RPC's name
        from vidplan_server.serving.grpc_server import parse

        error = self._authorized(grpc_context, "plan")
        if error is not None:
            return self._fail(grpc_context, error, pb.PlanResponse())
        try:
            request = parse(pb.PlanRequest, data)
        except ServingError as exc:
            self.service.count("grpc", "plan", outcome_of(exc))
            self.service.log.warning(("grpc", "malformed"), f"refused a gRPC plan call: {str(exc)[:300]}")
            return self._fail(grpc_context, exc, pb.PlanResponse())
        try:
            call = convert.plan_call(request)
        except ServingError as exc:
            self.service.count("grpc", "plan", outcome_of(exc))
            return self._fail(grpc_context, exc, pb.PlanResponse())
        try:
            reply = await self.service.plan(call, transport="grpc")
        except ServingError as exc:
            return self._fail(grpc_context, exc, pb.PlanResponse())
        return self._ok(grpc_context, convert.plan_response(reply, self.cameras))

    async def GetInfo(self, data: bytes, grpc_context=None) -> pb.InfoResponse:  # noqa: N802
        from vidplan_server.serving.grpc_server import parse

        error = self._authorized(grpc_context, "info")
        if error is not None:
            return self._fail(grpc_context, error, pb.InfoResponse())
        try:
            parse(pb.InfoRequest, data)
        except ServingError as exc:
            self.service.count("grpc", "info", outcome_of(exc))
            return self._fail(grpc_context, exc, pb.InfoResponse())
        service = self.service
        return self._ok(
            grpc_context, convert.info_response(service.model, service.limits.modes, service.serving_info())
        )

    async def StreamPlan(self, request_stream, grpc_context=None) -> AsyncIterator[pb.PlanResponse]:  # noqa: N802
        """Bidirectional planning on the newest observation, on this replica for the stream's life."""
        import asyncio
        import contextlib

        from vidplan_server.serving.grpc_server import parse
        from vidplan_server.serving.stream import StreamError

        error = self._authorized(grpc_context, "stream")
        if error is not None:
            self._fail(grpc_context, error, None)
            return
        stream = self.service.open_stream(transport="grpc")

        async def read() -> None:
            try:
                async for data in request_stream:
                    try:
                        request = parse(pb.PlanRequest, data)
                    except ServingError as exc:
                        stream.fail(0, "", exc)
                        continue
                    try:
                        call = convert.plan_call(request)
                    except ServingError as exc:
                        stream.fail(request.sequence, request.session_id, exc)
                        continue
                    await stream.submit(call)
            finally:
                stream.close_input()

        reader = asyncio.create_task(read())
        try:
            async for item in stream.replies():
                if isinstance(item, StreamError):
                    yield convert.error_response(item.sequence, item.session_id, item.error)
                else:
                    yield convert.plan_response(item, self.cameras)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            stream.close()

    # ------------------------------------------------------------------ Serve's life cycle
    def check_health(self) -> None:
        """Serve restarts a replica whose check raises; a full queue is load, not ill health."""
        if not (self.service.warmed_up and self.service.accepting):
            raise RuntimeError(f"replica {self.replica_id}: not serving")

    def __del__(self) -> None:
        # Serve calls this after graceful_shutdown_timeout_s, once ongoing requests are done.
        service = getattr(self, "service", None)
        if service is not None:
            service.close()


def deployment_options(settings: ServeSettings) -> dict[str, Any]:
    """``serve.deployment`` options from the settings: resources, autoscaling, capacity and shutdown."""
    actor = {"num_cpus": settings.ray_cpus_per_replica}
    if settings.ray_gpus_per_replica > 0:
        actor["num_gpus"] = settings.ray_gpus_per_replica
    fixed = settings.ray_min_replicas == settings.ray_max_replicas
    options: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "ray_actor_options": actor,
        # One plan on the planner thread plus the service's own queue: what the replica can hold.
        "max_ongoing_requests": settings.max_queue + 1,
        "max_queued_requests": settings.ray_max_queued,
        "graceful_shutdown_timeout_s": settings.shutdown_grace,
        "graceful_shutdown_wait_loop_s": 1.0,
        "health_check_period_s": 10.0,
        "health_check_timeout_s": 30.0,
    }
    if fixed:
        options["num_replicas"] = settings.ray_min_replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": settings.ray_min_replicas,
            "initial_replicas": settings.ray_min_replicas,
            "max_replicas": settings.ray_max_replicas,
            "target_ongoing_requests": settings.ray_target_ongoing,
            "upscale_delay_s": 5.0,
            "downscale_delay_s": 120.0,
        }
    return options


def replica_settings(settings: ServeSettings) -> dict[str, Any]:
    """What replicas get as their settings: every field but the token (read from each replica's environment)."""
    values = settings.model_dump(exclude={"token"})
    for name in ("ckpt", "tls_cert", "tls_key"):
        if values.get(name) is not None:
            values[name] = str(values[name])
    values["max_image_size"] = settings.max_image_size_text
    return values


def build_app(settings: ServeSettings):
    """The Serve application (bind it with ``serve.run``)."""
    from ray import serve

    deployment = serve.deployment(serve.ingress()(VidPlanReplica), **deployment_options(settings))
    return deployment.bind(replica_settings(settings))


def app_builder(args: dict[str, Any] | None = None):
    """For ``serve run`` / a Serve config file (``import_path: vidplan_server.serving.ray_serve:app_builder``):
    ``args`` are :class:`ServeSettings` fields; ``VIDPLAN_*`` variables of the process fill in the rest."""
    return build_app(load_settings(dict(args or {})))


def proxy_options(settings: ServeSettings) -> tuple[dict[str, Any], dict[str, Any]]:
    """Serve's HTTP and gRPC proxy options from the settings (host and ports as ``vidplan serve`` binds them)."""
    http = {"host": settings.host, "port": settings.http_port}
    grpc = {"port": settings.grpc_port, "grpc_servicer_functions": [GRPC_SERVICER_FUNCTION]}
    return http, grpc


def serve_until_signal(settings: ServeSettings) -> int:
    """``vidplan serve --ray``: start (or join) Ray, run the application, wait for SIGTERM / SIGINT, shut down."""
    try:
        import ray
        from ray import serve
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        from vidplan_server.argtypes import CliError

        raise CliError("--ray needs Ray Serve: pip install -e '.[scale]'") from exc
    if settings.grpc_port <= 0 or settings.http_port <= 0:
        from vidplan_server.argtypes import CliError

        raise CliError("--ray needs fixed ports: --grpc-port and --http-port > 0 (Serve's proxies bind them)")
    if settings.token_value:
        os.environ["VIDPLAN_TOKEN"] = settings.token_value  # replicas of a local Ray inherit it; never in a config
    ray.init(address=settings.ray_address, include_dashboard=False, logging_level=settings.log_level.upper())
    http, grpc = proxy_options(settings)
    serve.start(http_options=http, grpc_options=grpc)
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/", blocking=False)
    log.info(
        "ready on Ray Serve: gRPC %s, HTTP %s, replicas %d-%d",
        settings.grpc_port,
        settings.http_port,
        settings.ray_min_replicas,
        settings.ray_max_replicas,
    )
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("shutting down: Serve drains in-flight requests for up to %.0f s", settings.shutdown_grace)
        serve.delete(APP_NAME)
        serve.shutdown()
        ray.shutdown()
    return 0
