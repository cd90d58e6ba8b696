"""PlanService on a stub planner: validation, sessions and history, queueing, deadlines, streams."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace

import cv2
import numpy as np
import pytest

from tests.serving.doubles import call, frames, state
from vidplan_server.serving.errors import DeadlineExceeded, InvalidArgument, NoSafePlan, Overloaded, Unavailable
from vidplan_server.serving.images import encode_image
from vidplan_server.serving.messages import Image, Observation, Options
from vidplan_server.serving.stream import StreamError

WRIST = "wrist_image_left"


def _with_frame(name: str, image: Image | None):
    """A call whose observation has camera ``name`` replaced (or removed when ``image`` is None)."""
    base = call()
    fr = dict(base.observation.frames)
    if image is None:
        fr.pop(name)
    else:
        fr[name] = image
    return replace(base, observation=replace(base.observation, frames=fr))


def _with_state(**changes):
    base = call()
    return replace(base, observation=replace(base.observation, state=state(**changes)))


def _png(rgb_or_grey: np.ndarray) -> Image:
    ok, buf = cv2.imencode(".png", rgb_or_grey)
    assert ok
    return Image(data=buf.tobytes(), encoding="png")


JPEG = frames()[WRIST]
BAD_CALLS = {
    "missing camera": (_with_frame(WRIST, None), "observation.frames: missing camera 'wrist_image_left'"),
    "unknown camera": (_with_frame("top_camera", JPEG), "observation.frames: unknown camera 'top_camera'"),
    "corrupt jpeg": (
        _with_frame(WRIST, Image(data=b"\xff\xd8\xff\xe0 not really a jpeg", encoding="jpeg")),
        "observation.frames[wrist_image_left].data: not a decodable JPEG",
    ),
    "empty image": (_with_frame(WRIST, Image(data=b"", encoding="jpeg")), "observation.frames[wrist_image_left].data"),
    "grey png": (
        _with_frame(WRIST, _png(np.zeros((32, 32), np.uint8))),
        "observation.frames[wrist_image_left].data: 1 channel(s), expected 3",
    ),
    "rgba png": (
        _with_frame(WRIST, _png(np.zeros((32, 32, 4), np.uint8))),
        "observation.frames[wrist_image_left].data: 4 channel(s), expected 3",
    ),
    "raw wrong size": (
        _with_frame(WRIST, Image(data=bytes(100), encoding="raw", height=180, width=320)),
        "observation.frames[wrist_image_left].data: 100 bytes, expected 172800",
    ),
    "raw 4 channels": (
        _with_frame(WRIST, Image(data=bytes(16), encoding="raw", height=2, width=2, channels=4)),
        "observation.frames[wrist_image_left].channels",
    ),
    "declared size differs": (
        _with_frame(WRIST, replace(JPEG, height=100)),
        "observation.frames[wrist_image_left].height: the image is 180x320, the declared size 100x320",
    ),
    "unspecified encoding": (
        _with_frame(WRIST, replace(JPEG, encoding="unspecified")),
        "observation.frames[wrist_image_left].encoding",
    ),
    "nan joint": (
        _with_state(joint_position=[0.0, float("nan"), 0, -2, 0, 2, 0.7]),
        "observation.state.joint_position: element 1 is nan",
    ),
    "inf pose": (
        _with_state(cartesian_position=[0.4, 0, float("inf"), 3.1, 0, 0]),
        "observation.state.cartesian_position: element 2 is inf",
    ),
    "short joint vector": (_with_state(joint_position=[0.0] * 6), "observation.state.joint_position: 6 values"),
    "nan gripper": (_with_state(gripper_position=float("nan")), "observation.state.gripper_position"),
    "missing state": (replace(call(), observation=replace(call().observation, state=None)), "observation.state"),
    "empty instruction": (call(instruction="   "), "instruction: must not be empty"),
    "nan timestamp": (
        replace(call(), observation=replace(call().observation, timestamp_s=float("nan"))),
        "observation.timestamp_s",
    ),
    "nominal width": (call(nominal=[[0.0] * 6] * 3), "nominal: shape (3, 6), expected (steps, 7)"),
    "nominal nan": (call(nominal=[[0.0] * 7, [float("nan")] * 7]), "nominal: element [1, 0]"),
    "nominal space": (call(nominal=[[0.0] * 7], nominal_space="joint_torque"), "nominal.space"),
    "reference width": (call(reference=[[0.0] * 8] * 2), "reference: shape (2, 8), expected (steps, 7)"),
    "reference gripper": (
        call(reference=[[0.45, 0, 0.38, 3.14, 0, 0, 2.0]]),
        "reference: element [0, 6] is 2.0, outside [0, 1] (cartesian_position)",
    ),
    "history after observation": (
        call(t=1.0, history=[Observation(frames=frames(), timestamp_s=2.0)]),
        "history[0].timestamp_s",
    ),
    "history camera": (
        call(t=1.0, history=[Observation(frames={}, timestamp_s=0.5)]),
        "history[0].frames: missing camera",
    ),
    "option below range": (call(options=Options(num_proposals=0)), "options.num_proposals: 0 is outside [1, 64]"),
    "option above planner range": (call(options=Options(num_proposals=1000)), "options.num_proposals: 1000 is outside"),
    "gripper above 1": (
        _with_state(gripper_position=1.01),
        "observation.state.gripper_position: 1.01 is outside [0, 1]",
    ),
    "absurd joint": (
        _with_state(joint_position=[0.0, -0.35, 0, -2.3, 0, 1.95, 1e308]),
        "observation.state.joint_position: element 6 is 1e+308, outside [-2.9973, 2.9973]",
    ),
    "joint velocity nominal": (
        call(nominal=[[0.0] * 8, [0, 0, 1.5, 0, 0, 0, 0, 0]], nominal_space="joint_velocity"),
        "nominal: element [1, 2] is 1.5, outside [-1, 1] (joint_velocity)",
    ),
    "nominal gripper": (
        call(nominal=[[0.45, 0, 0.38, 3.14, 0, 0, 1.5]]),
        "nominal: element [0, 6] is 1.5, outside [0, 1] (cartesian_position)",
    ),
    "long session id": (call(session_id="s" * 129), "session_id: 129 characters, at most 128"),
    "unprintable session id": (call(session_id="robot\n1"), "session_id: 'robot\\n1' has characters other than"),
    "negative timestamp": (call(t=-1.0), "observation.timestamp_s: -1.0 is outside [0, 1e+10]"),
    "long instruction": (call(instruction="x" * 1001), "instruction: 1001 characters, at most 1000"),
    "too much history": (
        call(t=5.0, history=[Observation(frames=frames(), timestamp_s=4.0 + k / 15) for k in range(7)]),
        "history: 7 observations, at most 6",
    ),
    "image over the size limit": (
        _with_frame(WRIST, Image(data=bytes(3 * 1281), encoding="raw", height=1, width=1281)),
        "observation.frames[wrist_image_left].width: 1281 is outside [0, 1280]",
    ),
    "image over the size limit, either way": (
        _with_frame(WRIST, encode_image(np.zeros((721, 721, 3), np.uint8), "png")),
        "observation.frames[wrist_image_left].data: 721x721 pixels, larger than the server's limit of 1280x720",
    ),
    "policy mode without a policy": (
        call(options=Options(mode="policy")),
        "options.mode: 'policy' is not offered by this server (its model bundle has no policy; GetInfo modes: plan)",
    ),
    "unknown mode": (call(options=Options(mode="dream")), "options.mode: 'dream' is not one of plan, policy"),
    "policy samples above range": (
        call(options=Options(policy_samples=65)),
        "options.policy_samples: 65 is outside [0, 64]",
    ),
    "policy perturbations below range": (
        call(options=Options(policy_perturbations=-1)),
        "options.policy_perturbations: -1 is outside [0, 64]",
    ),
    "planner refuses": (
        call(instruction="planner refuses"),
        "observation.state.cartesian_position: the robot is outside the safety limits",
    ),
}

PLANNER_REFUSED = {"planner refuses"}  # what only the planner knows (its workspace check) comes after the session


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_field_is_named_and_next_good_request_succeeds(make_service, stub, name):
    service = make_service()
    bad, expected = BAD_CALLS[name]
    bad = replace(bad, session_id=bad.session_id or "robot-1", sequence=1)

    async def scenario():
        with pytest.raises(InvalidArgument) as info:
            await service.plan(bad)
        assert str(info.value).startswith(expected), str(info.value)
        # A request refused before planning leaves the session untouched, so sequence 1 is still free; one the
        # planner refused had a valid observation, which the session keeps.
        sequence = 2 if name in PLANNER_REFUSED else 1
        return await service.plan(call(sequence=sequence, t=0.5, session="robot-1"))

    reply = asyncio.run(scenario())
    assert reply.result.actions.shape == (15, 7)
    assert service.worker.waiting == 0 and service.in_flight == 0
    if name not in PLANNER_REFUSED:
        assert len(stub.requests) == 1  # refused before planning


def test_mode_and_proposal_mix_reach_the_planner(make_service, stub):
    """Per-request policy_samples / policy_perturbations / mode arrive in the planner's PlanOptions (unset = None,
    the planner's configured default); mode "policy" answers with the policy's own chunk and is not held to the
    informed pass's minimum deadline (it runs none)."""
    from vidplan_server.planning.types import PlanningError
    from vidplan_server.serving.errors import from_planner_error

    stub.policy = True
    stub.stages_ms = {"encode": 400.0, "propose": 1.0, "rollout": 5.0, "score": 1.0}
    service = make_service()
    assert service.describe()["modes"] == ["plan", "policy"]

    async def scenario():
        await service.plan(call(t=0.0, options=Options(policy_samples=3, policy_perturbations=2)))
        plain = await service.plan(call(t=0.1))
        baseline = await service.plan(call(t=0.2, deadline_s=0.3, options=Options(mode="policy", seed=4)))
        return plain, baseline

    plain, baseline = asyncio.run(scenario())
    first, second, third = stub.options
    assert (first.mode, first.policy_samples, first.policy_perturbations) == ("plan", 3, 2)
    assert (second.mode, second.policy_samples, second.policy_perturbations) == ("plan", None, None)
    assert (third.mode, third.seed, third.policy_samples) == ("policy", 4, None)
    assert 0 < third.deadline_s <= 0.3  # a budget below the measured pass (407 ms) still reaches the planner
    assert plain.result.confidence == 1.0
    r = baseline.result
    assert r.proposal_kinds == ["policy:0"] and r.confidence == 0.0 and r.uncertainty.size == 0
    assert service.min_deadline_ms(6, 1) == pytest.approx(407.0)  # the policy-only plan taught the estimate nothing
    # What the planner itself says about the mode keeps its field on the wire.
    error = from_planner_error(PlanningError("options.mode: 'policy' needs a checkpoint with a policy module"))
    assert isinstance(error, InvalidArgument) and error.field == "options.mode"


def test_out_of_order_sequence_and_time_are_refused(make_service):
    service = make_service()

    async def scenario():
        await service.plan(call(sequence=5, t=1.0, session="r"))
        with pytest.raises(InvalidArgument, match=r"^sequence: 3 is not after the session's last sequence 5"):
            await service.plan(call(sequence=3, t=2.0, session="r"))
        with pytest.raises(InvalidArgument, match=r"^sequence: 5 is not after"):
            await service.plan(call(sequence=5, t=2.0, session="r"))
        with pytest.raises(InvalidArgument, match=r"^observation.timestamp_s: 0.5 is not after"):
            await service.plan(call(sequence=6, t=0.5, session="r"))
        # Another session has its own counter.
        await service.plan(call(sequence=1, t=0.0, session="other"))
        return await service.plan(call(sequence=6, t=2.0, session="r"))

    assert asyncio.run(scenario()).sequence == 6


def test_unsafe_plan_is_reported_with_violations(make_service, stub):
    service = make_service()
    stub.unsafe = True
    with pytest.raises(NoSafePlan) as info:
        asyncio.run(service.plan(call()))
    assert info.value.violations == ["step 3: z below workspace"] and info.value.code == "FAILED_PRECONDITION"


def _brightness(history: np.ndarray) -> list[int]:
    """Mean brightness of each history frame (the marker ``frames(value)`` painted)."""
    return [int(round(float(f.mean()))) for f in history]


def test_history_from_session_timestamps(make_service, stub):
    service = make_service()
    # 15 Hz with jitter; frame k is painted 20 * k so the history shows which frames were picked.
    times = [0.0, 0.07, 0.13, 0.21, 0.26, 0.34, 0.41]

    async def scenario():
        for k, t in enumerate(times):
            await service.plan(call(sequence=k + 1, t=t, session="r", value=20 * k))

    asyncio.run(scenario())
    histories = [_brightness(r.history) for r in stub.requests]
    assert all(r.history.shape == (2, 3, 64, 64, 3) for r in stub.requests)
    # Young session: padded with the oldest (only) frame. Then the frame nearest t0 - 0.2 s.
    assert histories[0] == [0, 0]
    assert histories[1] == [0, 20]  # t0 0.07: target -0.13 -> oldest frame
    assert histories[3] == [0, 60]  # t0 0.21: target 0.01 -> frame at 0.0
    assert histories[4] == [20, 80]  # t0 0.26: target 0.06 -> frame at 0.07
    assert histories[6] == [60, 120]  # t0 0.41: target 0.21 -> frame 3 at 0.21


def test_carried_history_replaces_the_session(make_service, stub):
    service = make_service()
    past = [Observation(frames=frames(50), timestamp_s=9.8), Observation(frames=frames(60), timestamp_s=9.9)]

    async def scenario():
        await service.plan(call(sequence=1, t=9.79, session="r", value=10))
        reply = await service.plan(call(sequence=2, t=10.0, session="r", value=70, history=past))
        return reply

    reply = asyncio.run(scenario())
    assert _brightness(stub.requests[-1].history) == [50, 70]
    assert reply.history_timestamps_s == [9.8, 10.0]
    # Without a session and without history: the observation alone, padded.
    asyncio.run(service.plan(call(t=3.0, value=90)))
    assert _brightness(stub.requests[-1].history) == [90, 90]


def test_images_are_resized_to_the_model_size(make_service, stub):
    service = make_service()
    odd = {cam: encode_image(np.full((37, 53, 3), 30, np.uint8), "png") for cam in service.cameras}
    asyncio.run(service.plan(call(observation=replace(call().observation, frames=odd))))
    assert stub.requests[-1].history.shape == (2, 3, 64, 64, 3)
    assert _brightness(stub.requests[-1].history) == [30, 30]


def test_reply_is_stamped(make_service):
    service = make_service()
    reply = asyncio.run(service.plan(call(sequence=42, t=12.5, session="s")))
    assert (reply.sequence, reply.session_id, reply.t0_s, reply.i0) == (42, "s", 12.5, 1)
    assert reply.dt_s == pytest.approx(1 / 15)
    assert {"decode", "queue", "plan", "total"} <= set(reply.timings_ms)
    assert reply.model_version == "stub@0"


def test_overload_is_refused_at_once_and_queue_drains(make_service, stub):
    service = make_service(max_queue=1)
    stub.gate = threading.Event()

    async def scenario():
        running = asyncio.create_task(service.plan(call(t=0.0)))
        await asyncio.to_thread(stub.started.wait, 5)
        waiting = asyncio.create_task(service.plan(call(t=0.1)))
        while service.worker.waiting < 1:
            await asyncio.sleep(0.005)
        assert not service.ready
        start = time.perf_counter()
        with pytest.raises(Overloaded) as info:
            await service.plan(call(t=0.2))
        refused_after = time.perf_counter() - start
        stub.gate.set()
        return await asyncio.gather(running, waiting), refused_after, info.value

    replies, refused_after, error = asyncio.run(scenario())
    assert refused_after < 0.1 and error.retry_after_s >= 1 and error.code == "RESOURCE_EXHAUSTED"
    assert [r.t0_s for r in replies] == [0.0, 0.1]
    assert len(stub.requests) == 2 and service.worker.waiting == 0 and service.ready
    assert stub.max_active == 1 and len(stub.threads) == 1
    sample = service.metrics.registry.get_sample_value
    assert sample("vidplan_requests_total", {"transport": "inprocess", "call": "plan", "outcome": "overloaded"}) == 1
    assert sample("vidplan_requests_total", {"transport": "inprocess", "call": "plan", "outcome": "ok"}) == 2
    assert sample("vidplan_queue_depth") == 0


def test_deadline_passes_in_queue_and_propagates_to_the_planner(make_service, stub):
    service = make_service(max_queue=4)
    stub.gate = threading.Event()

    async def scenario():
        first = asyncio.create_task(service.plan(call(t=0.0)))
        await asyncio.to_thread(stub.started.wait, 5)
        late = asyncio.create_task(service.plan(call(t=0.1, deadline_s=0.05)))
        roomy = asyncio.create_task(service.plan(call(t=0.2, deadline_s=30.0)))
        await asyncio.sleep(0.2)
        stub.gate.set()
        await first
        with pytest.raises(DeadlineExceeded, match="^deadline: passed while the request waited"):
            await late
        return await roomy

    asyncio.run(scenario())
    assert len(stub.requests) == 2  # the late request never reached the planner
    assert stub.requests[0].options.deadline_s is None
    assert 29.0 < stub.requests[1].options.deadline_s < 30.0


def test_not_warmed_up_and_shutting_down_are_unavailable(stub):
    from vidplan_server.serving.service import PlanService

    service = PlanService(stub)
    try:
        with pytest.raises(Unavailable, match="warming up"):
            asyncio.run(service.plan(call()))
        assert not service.ready
        service.warmup()
        assert service.ready
        asyncio.run(service.plan(call()))
        service.begin_shutdown()
        assert not service.ready
        with pytest.raises(Unavailable, match="shutting down"):
            asyncio.run(service.plan(call()))
    finally:
        service.close()


def test_idle_sessions_expire(make_service):
    # a TTL far above what two stub plans take even on a loaded machine, and a sleep just past it
    service = make_service(session_ttl_s=1.0)
    asyncio.run(service.plan(call(sequence=7, t=1.0, session="r")))
    assert len(service.sessions) == 1
    time.sleep(1.1)
    # No sweep needed: the robot restarting after the TTL with the same id starts a fresh session, so its
    # sequence 1 is fine again (nothing else ran in between to expire the old one).
    asyncio.run(service.plan(call(sequence=1, t=0.0, session="r")))
    assert len(service.sessions) == 1
    asyncio.run(service.plan(call(sequence=2, t=0.1, session="r")))
    with pytest.raises(InvalidArgument, match="sequence"):  # while it is alive, order is still enforced
        asyncio.run(service.plan(call(sequence=2, t=0.2, session="r")))


def test_stream_plans_on_the_newest_and_reports_dropped(make_service, stub):
    service = make_service()
    stub.gate = threading.Event()

    async def scenario():
        stream = service.open_stream()
        replies = []

        async def read():
            async for item in stream.replies():
                replies.append(item)

        reader = asyncio.create_task(read())
        await stream.submit(call(sequence=1, t=0.0))
        await asyncio.to_thread(stub.started.wait, 5)  # plan 1 is running (blocked)
        for k in range(2, 6):
            await stream.submit(call(sequence=k, t=(k - 1) / 15))
        await stream.submit(call(sequence=6, t=0.0))  # time going backwards: an error for 6 alone
        stub.gate.set()
        stream.close_input()
        await asyncio.wait_for(reader, 10)
        return replies

    replies = asyncio.run(scenario())
    assert [r.sequence for r in replies] == [1, 5, 6]  # the error for 6 waits for the older pending 5
    errors = [r for r in replies if isinstance(r, StreamError)]
    plans = [r for r in replies if not isinstance(r, StreamError)]
    assert [e.sequence for e in errors] == [6] and errors[0].error.field == "observation.timestamp_s"
    assert [p.sequence for p in plans] == [1, 5]
    assert plans[1].dropped_sequences == [2, 3, 4]
    # Dropped observations still fed the history: plan 5 (t=0.267) sees the frame nearest 0.067 (sequence 2).
    assert plans[1].history_timestamps_s == [pytest.approx(1 / 15), pytest.approx(4 / 15)]
    assert len(stub.requests) == 2


def test_config_needs_a_queue_place():
    from vidplan_server.serving.config import ServiceConfig

    with pytest.raises(ValueError, match="max_queue"):
        ServiceConfig(max_queue=0)


def test_an_expired_grpc_deadline_is_deadline_exceeded():
    from tests.serving.doubles import pb_request
    from vidplan_server.serving.grpc_convert import plan_call

    with pytest.raises(DeadlineExceeded, match="deadline"):
        plan_call(pb_request(), transport_deadline_s=-0.01)
    assert plan_call(pb_request(), transport_deadline_s=0.5).deadline_s == pytest.approx(0.5)


def test_the_public_pipeline_is_what_plan_runs(make_service):
    """check -> schedule -> admission -> prepare -> execute, step by step, answers as ``plan`` does; the admission
    counts the call in flight and holds a queue slot until its block ends."""
    service = make_service(max_queue=1)

    async def scenario():
        c = call(sequence=1, t=0.5, session="robot-1")
        checked = service.check(c)
        scheduled = service.schedule(c, checked, time.perf_counter())
        with service.admission() as slot:
            assert service.in_flight == 1 and service.worker.saturated
            with pytest.raises(Overloaded):
                with service.admission():
                    pass
            prepared = await service.prepare(scheduled)
            assert prepared.history.shape[0] == service.history_len
            reply = await service.execute(prepared, slot)
        assert service.in_flight == 0 and not service.worker.saturated
        return reply

    reply = asyncio.run(scenario())
    assert reply.sequence == 1 and reply.result.actions.shape == (15, 7)
    assert service.serving_error(asyncio.CancelledError()) is None


def test_the_reference_rows_reach_the_planner(make_service, stub):
    """A request's reference (the unexecuted rest of the robot's chunk) arrives as (R, 7) float rows; none as None."""
    service = make_service()
    rows = [[0.45, 0.0, 0.38, 3.14, 0.0, 0.0, 0.0], [0.46, 0.0, 0.38, 3.14, 0.0, 0.0, 1.0]]

    async def scenario():
        await service.plan(call(t=0.0, reference=rows))
        await service.plan(call(t=0.1))

    asyncio.run(scenario())
    sent, none = stub.references
    np.testing.assert_allclose(sent, rows)
    assert none is None
