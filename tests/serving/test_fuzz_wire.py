"""A bounded fuzz target for the request path: protobuf bytes -> parse -> convert -> validate -> decode -> plan.

Hypothesis feeds it arbitrary bytes, mutations of a valid serialized request (flipped, inserted, deleted bytes,
truncation) and well-formed requests with hostile field values (NaN, infinities, huge numbers, odd strings, too
many of anything). Whatever comes in, the only way out is a reply or a :class:`ServingError` (what the transports
map to a status); anything else would be a gRPC UNKNOWN with a traceback. In process, on the stub planner, with a
fixed number of examples and derandomized, so the suite stays fast and repeatable.
"""

from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vidplan_client.wire import vidplan_pb2 as pb

from tests.serving.doubles import StubPlanner, pb_request
from vidplan_server.serving import grpc_convert
from vidplan_server.serving.config import ServiceConfig
from vidplan_server.serving.errors import ServingError
from vidplan_server.serving.grpc_server import parse
from vidplan_server.serving.service import PlanService

FUZZ = settings(
    max_examples=300, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)
VALID = pb_request(size=(24, 32)).SerializeToString()  # small images keep every example fast


@pytest.fixture(scope="module")
def service():
    service = PlanService(StubPlanner(), ServiceConfig(max_queue=4, max_sessions=8))
    service.warmup()
    yield service
    service.close()


def request_path(service: PlanService, data: bytes) -> str:
    """Run ``data`` through everything a gRPC Plan call does; returns "ok" or the error's code."""
    try:
        request = parse(pb.PlanRequest, data)
        call = grpc_convert.plan_call(request)
        reply = asyncio.run(service.plan(call, transport="grpc"))
    except ServingError as exc:
        assert exc.code in {"INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "FAILED_PRECONDITION"}, exc
        assert len(str(exc)) < 2000, "an error message must not echo unbounded input"
        return exc.code
    grpc_convert.plan_response(reply, list(service.cameras)).SerializeToString()
    return "ok"


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 8))):
        where = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if action == "flip":
            data[where] ^= draw(st.integers(1, 255))
        elif action == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=16))
        elif action == "delete":
            del data[where : where + draw(st.integers(1, 16))]
        else:
            del data[where:]
        if not data:
            break
    return bytes(data)


FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324]))
TEXT = st.one_of(st.text(max_size=40), st.sampled_from(["", " ", "\x00", "a" * 200, "robot\n1", "é" * 10]))


@st.composite
def hostile_fields(draw) -> bytes:
    request = pb.PlanRequest.FromString(VALID)
    request.session_id = draw(TEXT)
    request.sequence = draw(st.integers(0, 2**64 - 1))
    request.instruction = draw(TEXT)
    request.observation.timestamp_s = draw(FLOATS)
    state = request.observation.state
    state.gripper_position = draw(FLOATS)
    del state.joint_position[:]
    state.joint_position.extend(draw(st.lists(FLOATS, max_size=9)))
    frame = request.observation.frames[draw(st.integers(0, 2))]
    frame.camera = draw(st.one_of(TEXT, st.just("wrist_image_left")))
    frame.width = draw(st.integers(0, 2**32 - 1))
    frame.encoding = draw(st.integers(0, 5))
    options = request.options
    for name in ("num_proposals", "refine_iters", "flow_steps", "nominal_perturbations", "deadline_ms"):
        if draw(st.booleans()):
            setattr(options, name, draw(st.integers(0, 2**32 - 1)))
    options.seed = draw(st.integers(0, 2**64 - 1))
    if draw(st.booleans()):
        request.nominal.space = draw(st.integers(0, 3))
        for _ in range(draw(st.integers(0, 3))):
            request.nominal.rows.add(values=draw(st.lists(FLOATS, max_size=9)))
    for _ in range(draw(st.integers(0, 8))):
        past = request.history.add()
        past.CopyFrom(request.observation)
        past.timestamp_s = draw(FLOATS)
    return request.SerializeToString()


@FUZZ
@given(data=st.binary(max_size=512))
def test_arbitrary_bytes(service, data):
    request_path(service, data)


@FUZZ
@given(data=mutated())
def test_mutated_requests(service, data):
    request_path(service, data)


@FUZZ
@given(data=hostile_fields())
def test_well_formed_requests_with_hostile_values(service, data):
    request_path(service, data)


def test_the_target_reaches_the_planner(service):
    assert request_path(service, VALID) == "ok"
    nan = pb.PlanRequest.FromString(VALID)
    nan.observation.state.gripper_position = math.nan
    assert request_path(service, nan.SerializeToString()) == "INVALID_ARGUMENT"
    assert request_path(service, VALID[:-7]) == "INVALID_ARGUMENT"
