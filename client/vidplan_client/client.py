"""Synchronous and asyncio clients of the VidPlan gRPC service.

Both take a :class:`~vidplan_client.channel.ClientConfig`; failures surface as ``grpc.RpcError``
(``grpc.aio.AioRpcError`` for the async client) with the server's status code, after gRPC's own retries of
``UNAVAILABLE``. Requests are built with :mod:`vidplan_client.convert`.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vidplan_client.channel import ClientConfig, call_metadata, open_aio_channel, open_channel
from vidplan_client.wire import vidplan_pb2 as pb
from vidplan_client.wire import vidplan_pb2_grpc as pb_grpc


def _or(timeout_s: float | None, default_s: float) -> float:
    return default_s if timeout_s is None else timeout_s


def _health_name(status: int) -> str:
    return health_pb2.HealthCheckResponse.ServingStatus.Name(status)


class VidPlanClient:
    """Blocking client. Use as a context manager, or call :meth:`close`."""

    def __init__(self, config: ClientConfig | None = None, channel: grpc.Channel | None = None) -> None:
        self.config = config or ClientConfig()
        self._channel = channel or open_channel(self.config)
        self._stub = pb_grpc.VidPlanStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = call_metadata(self.config)

    def plan(self, request: pb.PlanRequest, timeout_s: float | None = None) -> pb.PlanResponse:
        """One Plan call; ``timeout_s`` (default ``config.plan_timeout_s``) bounds it, retries included."""
        return self._stub.Plan(request, timeout=_or(timeout_s, self.config.plan_timeout_s), metadata=self._metadata)

    def stream(self, requests: Iterable[pb.PlanRequest], timeout_s: float | None = None) -> Iterator[pb.PlanResponse]:
        """Bidirectional StreamPlan: responses in sequence order, each naming the sequence it answers; observations
        that went stale while the server was busy are skipped and listed in ``dropped_sequences``. ``timeout_s``
        bounds the whole stream."""
        return self._stub.StreamPlan(iter(requests), timeout=timeout_s, metadata=self._metadata)

    def info(self, timeout_s: float | None = None) -> pb.InfoResponse:
        return self._stub.GetInfo(
            pb.InfoRequest(), timeout=_or(timeout_s, self.config.info_timeout_s), metadata=self._metadata
        )

    def health(self, service: str = "", timeout_s: float | None = None) -> str:
        """grpc.health.v1 Check: "SERVING", "NOT_SERVING", ... (``service`` "" = the whole server)."""
        reply = self._health.Check(
            health_pb2.HealthCheckRequest(service=service),
            timeout=_or(timeout_s, self.config.info_timeout_s),
            metadata=self._metadata,
        )
        return _health_name(reply.status)

    def wait_until_ready(self, timeout_s: float) -> None:
        """Block until the channel connects; raises ``grpc.FutureTimeoutError`` after ``timeout_s``."""
        grpc.channel_ready_future(self._channel).result(timeout=timeout_s)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> VidPlanClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncVidPlanClient:
    """asyncio client on ``grpc.aio``. Use as an async context manager, or await :meth:`close`."""

    def __init__(self, config: ClientConfig | None = None, channel: grpc.aio.Channel | None = None) -> None:
        self.config = config or ClientConfig()
        self._channel = channel or open_aio_channel(self.config)
        self._stub = pb_grpc.VidPlanStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = call_metadata(self.config)

    async def plan(self, request: pb.PlanRequest, timeout_s: float | None = None) -> pb.PlanResponse:
        return await self._stub.Plan(
            request, timeout=_or(timeout_s, self.config.plan_timeout_s), metadata=self._metadata
        )

    async def stream(
        self, requests: AsyncIterable[pb.PlanRequest] | Iterable[pb.PlanRequest], timeout_s: float | None = None
    ) -> AsyncIterator[pb.PlanResponse]:
        """Bidirectional StreamPlan; yields responses in sequence order (stale observations are skipped and listed
        in ``dropped_sequences``)."""
        call = self._stub.StreamPlan(requests, timeout=timeout_s, metadata=self._metadata)
        async for response in call:
            yield response

    async def info(self, timeout_s: float | None = None) -> pb.InfoResponse:
        return await self._stub.GetInfo(
            pb.InfoRequest(), timeout=_or(timeout_s, self.config.info_timeout_s), metadata=self._metadata
        )

    async def health(self, service: str = "", timeout_s: float | None = None) -> str:
        reply = await self._health.Check(
            health_pb2.HealthCheckRequest(service=service),
            timeout=_or(timeout_s, self.config.info_timeout_s),
            metadata=self._metadata,
        )
        return _health_name(reply.status)

    async def wait_until_ready(self, timeout_s: float) -> None:
        """Wait until the channel connects; raises ``asyncio.TimeoutError`` after ``timeout_s``."""
        import asyncio

        await asyncio.wait_for(self._channel.channel_ready(), timeout_s)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncVidPlanClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
