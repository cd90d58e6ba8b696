"""The sync and asyncio clients against an in-process canned VidPlan server (a test double of the transport)."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest
from fakes import FakeEnv
from vidplan_client import AsyncVidPlanClient, ClientConfig, VidPlanClient
from vidplan_client.channel import service_config
from vidplan_client.convert import make_observation, make_request, make_state, response_to_plan


def request(sequence: int = 1):
    obs = make_observation(FakeEnv().images, make_state(np.zeros(7), [0.5, 0, 0.3, 3.1, 0, 0], 0.0), 10.0)
    return make_request("sess", sequence, "pick up the red cube", obs)


def test_plan_round_trip_sends_the_bearer_token(client, servicer):
    plan = response_to_plan(client.plan(request(5)))
    assert plan.sequence == 5 and plan.chunk.shape == (15, 7) and plan.t0_s == 10.0
    assert len(servicer.calls) == 1 and servicer.calls[0].instruction == "pick up the red cube"
    assert servicer.metadata[0]["authorization"] == "Bearer s3cret"


def test_no_token_sends_no_authorization(config, servicer):
    with VidPlanClient(ClientConfig(target=config.target)) as anonymous:
        anonymous.plan(request())
    assert "authorization" not in servicer.metadata[0]


def test_unavailable_is_retried_until_it_succeeds(client, servicer):
    servicer.fail_with = [grpc.StatusCode.UNAVAILABLE] * 2
    assert client.plan(request(9)).sequence == 9
    assert len(servicer.calls) == 3


def test_unavailable_gives_up_after_max_attempts(config, servicer):
    servicer.fail_with = [grpc.StatusCode.UNAVAILABLE] * 10
    with VidPlanClient(ClientConfig(target=config.target, max_attempts=3, initial_backoff_s=0.01)) as c:
        with pytest.raises(grpc.RpcError) as info:
            c.plan(request())
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(servicer.calls) == 3


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ],
)
def test_other_errors_are_not_retried(client, servicer, code):
    servicer.fail_with = [code]
    with pytest.raises(grpc.RpcError) as info:
        client.plan(request())
    assert info.value.code() == code
    assert len(servicer.calls) == 1


def test_deadline_bounds_the_call(client, servicer):
    servicer.delay_s = 0.5
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        client.plan(request(), timeout_s=0.1)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 0.45
    assert len(servicer.calls) == 1  # DEADLINE_EXCEEDED is not retried


def test_unreachable_server_fails_fast_with_unavailable():
    with VidPlanClient(ClientConfig(target="127.0.0.1:1", max_attempts=2, initial_backoff_s=0.01)) as c:
        with pytest.raises(grpc.RpcError) as info:
            c.plan(request(), timeout_s=2.0)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_stream_answers_every_request_in_order(client, servicer):
    responses = list(client.stream(request(s) for s in (1, 2, 3)))
    assert [r.sequence for r in responses] == [1, 2, 3]
    assert [int(r.chunk[0].values[0]) for r in responses] == [1, 2, 3]


def test_info_and_health(client):
    info = client.info()
    assert list(info.cameras) == ["exterior_image_1_left", "exterior_image_2_left", "wrist_image_left"]
    assert (info.history, info.horizon, info.frame_stride, info.chunk_steps) == (2, 5, 3, 15)
    assert client.health() == "SERVING"
    assert client.health("vidplan.v1.VidPlan") == "NOT_SERVING"


def test_service_config_retries_only_unavailable():
    assert '"retryableStatusCodes": ["UNAVAILABLE"]' in service_config(ClientConfig())
    assert "retryPolicy" not in service_config(ClientConfig(max_attempts=1))
    with pytest.raises(ValueError, match="max_attempts"):
        ClientConfig(max_attempts=6)


def test_async_client(config, servicer):
    async def scenario():
        async with AsyncVidPlanClient(config) as c:
            servicer.fail_with = [grpc.StatusCode.UNAVAILABLE]
            first = await c.plan(request(4))
            retried_calls = len(servicer.calls)
            servicer.fail_with = [grpc.StatusCode.INVALID_ARGUMENT]
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await c.plan(request(5))
            streamed = [r.sequence async for r in c.stream([request(7), request(8)])]
            return first, retried_calls, info.value.code(), streamed, await c.health(), await c.info()

    first, retried_calls, code, streamed, health, info = asyncio.run(scenario())
    assert first.sequence == 4 and retried_calls == 2
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert streamed == [7, 8]
    assert health == "SERVING" and info.model_version == "canned"
    assert servicer.metadata[0]["authorization"] == "Bearer s3cret"


def test_tls_is_used_when_asked(config, servicer, tmp_path):
    # The canned server speaks plaintext, so a TLS handshake with it must fail; no request reaches it.
    pem = tmp_path / "roots.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    with pytest.raises(ValueError, match="does not exist"):
        ClientConfig(target=config.target, root_cert_path=str(tmp_path / "missing.pem"))
    assert ClientConfig(target=config.target, root_cert_path=str(pem)).secure
    assert not ClientConfig(target=config.target).secure
    with VidPlanClient(ClientConfig(target=config.target, tls=True, max_attempts=1)) as secure:
        with pytest.raises(grpc.RpcError) as info:
            secure.info(timeout_s=2.0)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.metadata == []
