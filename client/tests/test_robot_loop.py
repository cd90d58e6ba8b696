"""The DROID loop with a fake env, a fake clock and a scripted plan client: no server, no real time."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from fakes import DT_S, FakeClock, FakeEnv, FakePlanClient, FakeRpcError, canned_response
from vidplan_client.robot_loop import LoopConfig, RobotLoop
from vidplan_client.wire import vidplan_pb2 as pb


def make_loop(script=None, **config):
    clock, env = FakeClock(), FakeEnv()
    client = FakePlanClient(script)
    loop = RobotLoop(env, client, LoopConfig(instruction="put the red cube in the tray", **config),
                     clock=clock, sleep=clock.sleep)
    return loop, env, client, clock


def commanded(env):
    """(sequence, row) of every command that came from a chunk, None for a hold."""
    return [(int(a[0]), int(a[1])) if a[0] >= 1 else None for a, _, _ in env.commands]


def assert_held(env, step):
    action, space, blocking = env.commands[step]
    np.testing.assert_allclose(action, np.concatenate([env.poses[step], [0.25]]))
    assert space == "cartesian_position" and blocking is False


@pytest.mark.parametrize("horizon", [8, 3])
def test_executes_each_chunk_for_the_open_loop_horizon(horizon):
    loop, env, client, _ = make_loop(open_loop_steps=horizon)
    loop.run(2 * horizon + 1)
    assert [r.sequence for r in client.requests] == [1, 2, 3]
    expected = [(1, k) for k in range(horizon)] + [(2, k) for k in range(horizon)] + [(3, 0)]
    assert commanded(env) == expected
    assert all(space == "cartesian_position" and not blocking for _, space, blocking in env.commands)
    assert all(r.kind == "chunk" for r in loop.records)


def test_runs_at_the_control_rate():
    loop, env, _, clock = make_loop()
    start = clock.t
    loop.run(30)
    assert clock.t - start == pytest.approx(30 * DT_S)
    assert env.observations == 30 and len(env.commands) == 30


def test_holds_position_when_the_server_is_late_and_never_replays_an_old_chunk():
    def script(request):
        if request.sequence == 2:
            raise FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED)
        return canned_response(request)

    loop, env, client, _ = make_loop(script)
    loop.run(10)
    # Steps 0-7: chunk 1. Step 8: the plan is late -> hold at the observed pose. Step 9: new chunk 3, from row 0.
    assert commanded(env)[:8] == [(1, k) for k in range(8)]
    assert commanded(env)[8] is None
    assert_held(env, 8)
    assert "DEADLINE_EXCEEDED" in loop.records[8].reason
    assert commanded(env)[9] == (3, 0)
    assert client.timeouts == [0.5, 0.5, 0.5]


def test_holds_every_cycle_while_the_server_is_unreachable():
    def script(request):
        raise FakeRpcError(grpc.StatusCode.UNAVAILABLE)

    loop, env, client, _ = make_loop(script)
    loop.run(6)
    assert commanded(env) == [None] * 6
    for step in range(6):
        assert_held(env, step)  # the current pose each time, not the first one
    assert len(client.requests) == 6 and [r.sequence for r in client.requests] == list(range(1, 7))


def test_outage_mid_chunk_does_not_resume_the_old_chunk():
    outage = {2, 3, 4}

    def script(request):
        if request.sequence in outage:
            raise FakeRpcError(grpc.StatusCode.UNAVAILABLE)
        return canned_response(request)

    loop, env, _, _ = make_loop(script, open_loop_steps=4)
    loop.run(9)
    seen = commanded(env)
    assert seen[:4] == [(1, k) for k in range(4)]
    assert seen[4:7] == [None] * 3  # rows 4.. of chunk 1 are never used
    assert seen[7:] == [(5, 0), (5, 1)]
    rows = [s for s in seen if s is not None]
    assert len(rows) == len(set(rows))  # no row executed twice


@pytest.mark.parametrize("answered", ["stale", "duplicate", "other_session"])
def test_drops_responses_that_do_not_answer_the_request(answered):
    def script(request):
        if request.sequence == 2:
            if answered == "stale":
                return canned_response(request, sequence=1)
            if answered == "duplicate":
                return canned_response(client.requests[0])  # a replay of the first answer
            response = canned_response(request)
            response.session_id = "someone-else"
            return response
        return canned_response(request)

    loop, env, client, _ = make_loop(script)
    loop.run(10)
    seen = commanded(env)
    assert seen[:8] == [(1, k) for k in range(8)]
    assert seen[8] is None and "dropped" in loop.records[8].reason
    assert_held(env, 8)
    assert seen[9] == (3, 0)


def test_a_late_chunk_starts_at_the_row_for_now():
    def script(request):
        clock.t += 0.27  # the answer arrives about 4 control periods after the observation
        return canned_response(request)

    loop, env, _, clock = make_loop(script)
    loop.step()
    loop.step()
    # Row k is the target for t0 + (1 + k) dt; commanded at t0 + 4.05 dt it aims at the next tick, t0 + 5.05 dt
    # -> row 4. The next cycle (same fake time) moves on to row 5 rather than repeating row 4.
    assert commanded(env) == [(1, 4), (1, 5)]


def test_a_chunk_whose_horizon_has_passed_is_dropped():
    def script(request):
        if request.sequence == 1:
            clock.t += 0.7  # later than the whole 8-step horizon
        return canned_response(request)

    loop, env, _, clock = make_loop(script)
    loop.step()
    loop.step()
    assert commanded(env) == [None, (2, 0)]
    assert "too late" in loop.records[0].reason
    assert_held(env, 0)


def test_stream_error_responses_hold():
    def script(request):
        if request.sequence == 1:
            return pb.PlanResponse(session_id=request.session_id, sequence=1,
                                   error=pb.PlanError(code="FAILED_PRECONDITION", message="no safe plan"))
        return canned_response(request)

    loop, env, _, _ = make_loop(script)
    loop.run(2)
    assert commanded(env) == [None, (2, 0)]
    assert "no safe plan" in loop.records[0].reason


def test_requests_carry_the_observation_and_spaced_history():
    loop, env, client, _ = make_loop(open_loop_steps=4)
    loop.run(9)
    first, second, third = client.requests
    assert first.instruction == "put the red cube in the tray" and first.session_id == loop.session_id
    assert len(first.history) == 0  # nothing observed 3 steps before the first cycle
    for req in (second, third):
        assert len(req.history) == 1
        assert req.history[0].timestamp_s == pytest.approx(req.observation.timestamp_s - 3 * DT_S)
        assert [f.camera for f in req.history[0].frames] == [f.camera for f in req.observation.frames]
    np.testing.assert_allclose(second.observation.state.cartesian_position, env.poses[4])
    assert [f.encoding for f in second.observation.frames] == [pb.IMAGE_ENCODING_JPEG] * 3


def test_no_history_when_disabled():
    loop, _, client, _ = make_loop(open_loop_steps=4, history_frames=0)
    loop.run(5)
    assert [len(r.history) for r in client.requests] == [0, 0]


def test_an_overrun_cycle_is_not_made_up_for():
    def script(request):
        clock.t += 0.2 if request.sequence == 1 else 0.0
        return canned_response(request)

    loop, _, _, clock = make_loop(script)
    loop.run(4)
    assert all(s > 0 for s in clock.slept)  # FakeClock.sleep also asserts this
    assert len(clock.slept) == 3  # the overrun cycle sleeps not at all, the others one period each
    assert clock.slept == pytest.approx([DT_S] * 3)


def test_config_is_checked():
    with pytest.raises(ValueError, match="instruction"):
        LoopConfig(instruction="")
    with pytest.raises(ValueError, match="open_loop_steps"):
        LoopConfig(instruction="go", open_loop_steps=0)
