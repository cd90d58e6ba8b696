"""gRPC transport (``grpc.aio``): the VidPlan servicer, bearer-token auth, health and reflection.

The servicer converts and delegates to :class:`PlanService`; :func:`status_code` is the one place where
service errors become gRPC status codes. Health (``grpc.health.v1``) reports NOT_SERVING until the model
is warmed up and again from the start of a graceful shutdown; it needs no token, and reflection needs none
while metrics are public (``ServerConfig.metrics_public``).

The VidPlan methods are registered with raw-bytes handlers and parse their requests themselves, so that
the token is checked before a byte of the request is parsed, and a request that is not valid protobuf
(corrupt, truncated, a string that is not UTF-8) is INVALID_ARGUMENT with one rate-limited log line rather
than gRPC's UNKNOWN with a traceback per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from vidplan_client.wire import vidplan_pb2 as pb

from vidplan_server.serving import grpc_convert as convert
from vidplan_server.serving.config import ServerConfig
from vidplan_server.serving.errors import (
    InvalidArgument,
    Overloaded,
    ServingError,
    Unauthenticated,
    bearer_token_matches,
    outcome_of,
)
from vidplan_server.serving.service import PlanService
from vidplan_server.serving.stream import StreamError

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["VidPlan"].full_name  # "vidplan.v1.VidPlan"
HEALTH_PREFIX = "/grpc.health.v1.Health/"  # always open: load balancers must not need the token
REFLECTION_PREFIX = "/grpc.reflection."  # open while metrics are public
#: The methods of this server, as the ``call`` label of the request counter names them (a fixed set).
CALLS = {f"/{SERVICE_NAME}/Plan": "plan", f"/{SERVICE_NAME}/StreamPlan": "stream", f"/{SERVICE_NAME}/GetInfo": "info"}

log = logging.getLogger(__name__)


def status_code(error: ServingError) -> grpc.StatusCode:
    """The gRPC status of a service error (its ``code`` is the status name)."""
    return grpc.StatusCode[error.code]


async def abort(context: grpc.aio.ServicerContext, error: ServingError) -> None:
    """End the call with the error's status; overload also tells when to retry (trailing ``retry-after``, s)."""
    if isinstance(error, Overloaded):
        context.set_trailing_metadata((("retry-after", str(int(error.retry_after_s))),))
    await context.abort(status_code(error), str(error))


def parse(message_type: type[Message], data: bytes) -> Message:
    """A request message from its wire bytes; :class:`InvalidArgument` (field ``request``) when they are not one."""
    try:
        return message_type.FromString(data)
    except DecodeError as exc:
        reason = str(exc).rsplit(": ", 1)[-1] if str(exc) else "could not be parsed"
        raise InvalidArgument(
            f"not a valid {message_type.DESCRIPTOR.full_name} message ({reason})", field="request"
        ) from None


class VidPlanServicer:
    """Plan, StreamPlan and GetInfo on one :class:`PlanService`; requests arrive as bytes (see :func:`handlers`)."""

    def __init__(self, service: PlanService) -> None:
        self.service = service
        self.cameras = list(service.cameras)

    def _refused(self, call: str, error: ServingError, malformed: bool) -> None:
        self.service.count("grpc", call, outcome_of(error))
        if malformed:
            self.service.log.warning(("grpc", "malformed"), f"refused a gRPC {call} call: {str(error)[:300]}")

    async def Plan(self, data: bytes, context: grpc.aio.ServicerContext) -> pb.PlanResponse:
        try:
            request = parse(pb.PlanRequest, data)
        except InvalidArgument as exc:
            self._refused("plan", exc, malformed=True)
            await abort(context, exc)
        try:
            call = convert.plan_call(request, context.time_remaining())
        except ServingError as exc:
            self._refused("plan", exc, malformed=False)
            await abort(context, exc)
        try:
            reply = await self.service.plan(call, transport="grpc")
        except ServingError as exc:
            await abort(context, exc)
        return convert.plan_response(reply, self.cameras)

    async def StreamPlan(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.PlanResponse]:
        stream = self.service.open_stream(transport="grpc")

        async def read() -> None:
            try:
                async for data in request_iterator:
                    try:
                        request = parse(pb.PlanRequest, data)
                    except InvalidArgument as exc:
                        self.service.log.warning(("grpc", "malformed"), f"refused a StreamPlan request: {exc}")
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

    async def GetInfo(self, data: bytes, context: grpc.aio.ServicerContext) -> pb.InfoResponse:
        try:
            parse(pb.InfoRequest, data)
        except InvalidArgument as exc:
            self._refused("info", exc, malformed=True)
            await abort(context, exc)
        service = self.service
        return convert.info_response(service.model, service.limits.modes, service.serving_info())


def handlers(servicer: VidPlanServicer) -> grpc.GenericRpcHandler:
    """The VidPlan service with raw-bytes requests (no deserializer) and protobuf replies."""
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "Plan": grpc.unary_unary_rpc_method_handler(
                servicer.Plan, response_serializer=pb.PlanResponse.SerializeToString
            ),
            "StreamPlan": grpc.stream_stream_rpc_method_handler(
                servicer.StreamPlan, response_serializer=pb.PlanResponse.SerializeToString
            ),
            "GetInfo": grpc.unary_unary_rpc_method_handler(
                servicer.GetInfo, response_serializer=pb.InfoResponse.SerializeToString
            ),
        },
    )


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without ``authorization: Bearer <token>`` metadata (UNAUTHENTICATED), except the methods
    under ``public_prefixes``."""

    def __init__(
        self,
        token: str,
        service: PlanService | None = None,
        public_prefixes: tuple[str, ...] = (HEALTH_PREFIX, REFLECTION_PREFIX),
    ) -> None:
        self._token = token
        self._service = service
        self._public = public_prefixes

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(self._public):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        if bearer_token_matches(metadata.get("authorization"), self._token):
            return handler
        if self._service is not None:
            call = CALLS.get(method, "reflection" if method.startswith(REFLECTION_PREFIX) else "other")
            self._service.count("grpc", call, "unauthenticated")
            self._service.log.warning(("grpc", "unauthenticated"), f"refused a gRPC {call} call without a valid token")
        error = Unauthenticated("missing or wrong bearer token", field="authorization")
        return _denying_handler(handler, error)


def _denying_handler(handler: grpc.RpcMethodHandler, error: ServingError) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that aborts with ``error`` (the request is not even parsed)."""

    async def deny(request_or_iterator, context):
        await context.abort(status_code(error), str(error))

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(deny, response_serializer=handler.response_serializer)


class GrpcServer:
    """A ``grpc.aio`` server with the VidPlan servicer, health and reflection; call in the serving loop."""

    def __init__(self, service: PlanService, config: ServerConfig) -> None:
        self.service = service
        self.config = config
        options = [
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            # The robot client pings every 20 s, also between calls; without these the server answers
            # with GOAWAY too_many_pings.
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
            ("grpc.http2.max_ping_strikes", 0),
        ]
        public = (HEALTH_PREFIX, REFLECTION_PREFIX) if config.metrics_public else (HEALTH_PREFIX,)
        interceptors = [BearerTokenInterceptor(config.token, service, public)] if config.token else []
        self.server = grpc.aio.server(options=options, interceptors=interceptors)
        self.server.add_generic_rpc_handlers((handlers(VidPlanServicer(service)),))
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        address = f"{config.host}:{config.grpc_port}"
        if config.tls:
            credentials = grpc.ssl_server_credentials([(config.tls_key.read_bytes(), config.tls_cert.read_bytes())])  # type: ignore[union-attr]
            self.port = self.server.add_secure_port(address, credentials)
        else:
            self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"gRPC could not bind {address}")

    async def start(self) -> None:
        await self.set_serving(False)
        await self.server.start()

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def begin_shutdown(self) -> None:
        """Health goes NOT_SERVING for good; calls keep working until :meth:`stop`."""
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace_s: float) -> None:
        await self.server.stop(grace_s)
