"""One robot's connection to the server: a unary ``Plan`` over ``grpc.aio``, or ``POST /v1/plan`` over ``httpx``.

Each robot gets its own transport, so its own connection: its own gRPC channel (a local subchannel pool, so
channels to the same target do not share one TCP connection, as separate robots would not) or its own HTTP
connection pool. A call never raises for what the server or the network did: it returns an :class:`Outcome`, ``OK``
with the reply, or the status the transport reported. No retries: gRPC's retry of ``UNAVAILABLE`` (the robot
client's default) would hide refusals the load test is there to count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from vidplan_client.wire import vidplan_pb2 as pb

from vidplan_server.apps.loadtest.config import LoadTestConfig
from vidplan_server.apps.loadtest.http_wire import info_from_json, request_json, response_from_json

#: Codes of failures on the client's side of the HTTP transport (gRPC reports its own as status codes).
CLIENT_TIMEOUT, CONNECTION_ERROR, BAD_REPLY = "CLIENT_TIMEOUT", "CONNECTION_ERROR", "BAD_REPLY"
#: What an HTTP status means when the body does not say (the server's own table, for Starlette's errors).
_HTTP_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    413: "RESOURCE_EXHAUSTED",
    422: "FAILED_PRECONDITION",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


@dataclass(frozen=True)
class Outcome:
    """What one plan call came to."""

    code: str  # "OK"; else the gRPC status name (over HTTP: the error body's), or a client-side failure
    http_status: int | None = None  # the HTTP status, over HTTP
    response: pb.PlanResponse | None = None  # the reply, when OK

    @property
    def ok(self) -> bool:
        return self.code == "OK"

    @property
    def key(self) -> str:
        """ "OK", or how errors are counted: the gRPC status name, or ``"<HTTP status> <code>"`` over HTTP."""
        return self.code if self.ok or self.http_status is None else f"{self.http_status} {self.code}"

    @property
    def deadline_exceeded(self) -> bool:
        return self.code in ("DEADLINE_EXCEEDED", CLIENT_TIMEOUT)


class PlanTransport(Protocol):
    """What the driver needs of a connection."""

    async def info(self) -> pb.InfoResponse: ...

    async def plan(self, request: pb.PlanRequest, timeout_s: float) -> Outcome: ...

    async def close(self) -> None: ...


class GrpcTransport:
    """The client package's ``AsyncVidPlanClient`` on a channel of this robot's own."""

    def __init__(self, config: LoadTestConfig) -> None:
        import grpc
        from vidplan_client.channel import ClientConfig, channel_credentials, channel_options
        from vidplan_client.client import AsyncVidPlanClient

        client_config = ClientConfig(
            target=config.target, token=config.token, root_cert_path=config.root_cert, max_attempts=1
        )
        options = [*channel_options(client_config), ("grpc.use_local_subchannel_pool", 1)]
        credentials = channel_credentials(client_config)
        channel = (
            grpc.aio.insecure_channel(config.target, options=options)
            if credentials is None
            else grpc.aio.secure_channel(config.target, credentials, options=options)
        )
        self._grpc = grpc
        self.client = AsyncVidPlanClient(client_config, channel=channel)

    async def info(self) -> pb.InfoResponse:
        return await self.client.info()

    async def plan(self, request: pb.PlanRequest, timeout_s: float) -> Outcome:
        try:
            return Outcome("OK", response=await self.client.plan(request, timeout_s=timeout_s))
        except self._grpc.aio.AioRpcError as e:
            return Outcome(e.code().name)

    async def close(self) -> None:
        await self.client.close()


class HttpTransport:
    """``POST /v1/plan`` with the JSON body of the same request, on an ``httpx.AsyncClient`` of its own."""

    def __init__(self, config: LoadTestConfig) -> None:
        import httpx

        self._httpx = httpx
        scheme = "https" if config.root_cert else "http"
        headers = {"authorization": f"Bearer {config.token}"} if config.token else {}
        verify = self._ssl_context(config.root_cert) if config.root_cert else True
        self.client = httpx.AsyncClient(
            base_url=f"{scheme}://{config.target}", headers=headers, verify=verify, timeout=config.timeout_s
        )

    @staticmethod
    def _ssl_context(root_cert: str):
        import ssl

        return ssl.create_default_context(cafile=root_cert)

    async def info(self) -> pb.InfoResponse:
        response = await self.client.get("/v1/info")
        response.raise_for_status()
        return info_from_json(response.json())

    async def plan(self, request: pb.PlanRequest, timeout_s: float) -> Outcome:
        httpx = self._httpx
        try:
            response = await self.client.post("/v1/plan", json=request_json(request), timeout=timeout_s)
        except httpx.TimeoutException:
            return Outcome(CLIENT_TIMEOUT)
        except httpx.TransportError:
            return Outcome(CONNECTION_ERROR)
        if response.status_code == 200:
            try:
                return Outcome("OK", 200, response_from_json(response.json()))
            except (ValueError, KeyError, TypeError):
                return Outcome(BAD_REPLY, 200)
        try:
            code = str(response.json()["error"]["code"])
        except (ValueError, KeyError, TypeError):
            code = _HTTP_CODES.get(response.status_code, "UNKNOWN")
        return Outcome(code, response.status_code)

    async def close(self) -> None:
        await self.client.aclose()


def open_transport(config: LoadTestConfig) -> PlanTransport:
    """A new connection of ``config.transport`` to ``config.target``."""
    return GrpcTransport(config) if config.transport == "grpc" else HttpTransport(config)
