"""The DROID loop with a fake env, a fake clock and a scripted plan client: no server, no real time.

Requests go through :class:`LatencyExecutor`, which makes each answer visible only once the fake clock has moved
past the request's latency, so "the server takes 0.25 s" is deterministic. One test runs the real worker thread.
"""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
from fakes import DT_S, FakeClock, FakeEnv, FakePlanClient, FakeRpcError, canned_response
from vidplan_client.robot_loop import LoopConfig, RobotLoop
from vidplan_client.wire import vidplan_pb2 as pb


class _FakeFuture:
    def __init__(self, clock, ready_s, result=None, error=None) -> None:
        self.clock, self.ready_s, self._result, self._error = clock, ready_s, result, error

    def done(self) -> bool:
        return self.clock() >= self.ready_s

    def result(self):
        assert self.done(), "the loop must not wait for an answer"
        if self._error is not None:
            raise self._error
        return self._result


class LatencyExecutor:
    """Calls ``client.plan`` at once; its outcome shows ``latency(request)`` fake seconds later, or fails with
    DEADLINE_EXCEEDED at the call's ``timeout_s`` when the latency is longer (as gRPC's deadline does)."""

    def __init__(self, clock: FakeClock, latency) -> None:
        self.clock, self.latency = clock, latency

    def submit(self, fn, request, timeout_s=None):
        start, delay = self.clock(), self.latency(request)
        try:
            future = _FakeFuture(self.clock, start + delay, result=fn(request, timeout_s=timeout_s))
        except grpc.RpcError as e:
            future = _FakeFuture(self.clock, start + delay, error=e)
        if timeout_s is not None and delay > timeout_s:
            return _FakeFuture(self.clock, start + timeout_s, error=FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED))
        return future


def make_loop(script=None, latency=None, **config):
    clock, env = FakeClock(), FakeEnv()
    client = FakePlanClient(script)
    if latency is None:
        latency = 0.0
    delay = latency if callable(latency) else (lambda request: latency)
    loop = RobotLoop(env, client, LoopConfig(instruction="put the red cube in the tray", **config),
                     clock=clock, sleep=clock.sleep, executor=LatencyExecutor(clock, delay))
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
    # An instant server is asked once per chunk, when the chunk is used up, and answers within the cycle.
    assert [r.sequence for r in client.requests] == [1, 2, 3]
    expected = [(1, k) for k in range(horizon)] + [(2, k) for k in range(horizon)] + [(3, 0)]
    assert commanded(env) == expected
    assert all(space == "cartesian_position" and not blocking for _, space, blocking in env.commands)
    assert all(r.kind == "chunk" for r in loop.records)
    assert [p.outcome for p in loop.plans] == ["used"] * 3


def test_runs_at_the_control_rate():
    loop, env, _, clock = make_loop()
    start = clock.t
    loop.run(30)
    assert clock.t - start == pytest.approx(30 * DT_S)
    assert env.observations == 30 and len(env.commands) == 30


def test_commands_keep_flowing_at_15_hz_while_a_request_is_slow():
    # Each answer takes 0.25 s (3.75 control periods): the loop keeps commanding every cycle meanwhile.
    loop, env, client, clock = make_loop(latency=0.25)
    start = clock.t
    loop.run(24)
    assert len(env.commands) == 24 and clock.t - start == pytest.approx(24 * DT_S)
    assert clock.slept == pytest.approx([DT_S] * 24)  # no cycle ever waited for the server
    seen = commanded(env)
    # Only the very first answer is waited for (holding). Then each request leaves while the current chunk still
    # has the 3 rows that cover the latency, so the next chunk arrives as it runs out: no holds, no gaps.
    assert seen[:4] == [None] * 4
    for step in range(4):
        assert_held(env, step)
        assert "waiting for plan 1" in loop.records[step].reason
    assert seen[4:] == [(s, k) for s in range(1, 6) for k in range(4, 8)]
    assert [r.step for r in loop.records if r.sent is not None] == [0, 4, 8, 12, 16, 20]
    assert [r.sequence for r in client.requests] == [1, 2, 3, 4, 5, 6]
    assert loop.lead_steps == 3
    assert [p.latency_s for p in loop.plans[:5]] == pytest.approx([4 * DT_S] * 5)


def test_a_newer_chunk_replaces_the_current_one_mid_execution():
    # Plan 2 comes back faster (0.1 s) than plan 1 (0.25 s) told the loop to expect, so it arrives while chunk 1 still
    # has rows left: the loop switches at once and chunk 1's remaining rows 6 and 7 are never executed.
    loop, env, _, _ = make_loop(latency=lambda request: 0.1 if request.sequence == 2 else 0.25)
    loop.run(13)
    seen = commanded(env)
    assert seen[:4] == [None] * 4
    assert seen[4:6] == [(1, 4), (1, 5)]
    assert seen[6:12] == [(2, k) for k in range(2, 8)]  # starts at the row for now (its observation is 2 cycles old)
    assert seen[12] == (3, 4)
    assert (1, 6) not in seen and (1, 7) not in seen
    assert [p.outcome for p in loop.plans] == ["used", "used", "used", "in flight"]  # plan 4 left at cycle 12


def test_a_chunk_whose_rows_are_all_in_the_past_is_dropped():
    # Plan 1 takes 0.7 s, longer than its whole 8-row horizon (0.53 s): every row it could execute is in the past.
    loop, env, _, _ = make_loop(latency=lambda request: 0.7 if request.sequence == 1 else 0.0, plan_timeout_s=1.0)
    loop.run(12)
    assert commanded(env) == [None] * 11 + [(2, 0)]
    for step in range(11):
        assert_held(env, step)
    first = loop.plans[0]
    assert first.outcome == "dropped" and "too late" in first.reason
    assert loop.records[11].sent == 2  # the next request left in the cycle that dropped the late chunk


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


def test_holds_through_an_outage_that_runs_into_the_deadline():
    # Plans 2 and 3 hang past the 0.5 s deadline: the loop holds at the observed pose every cycle while they are in
    # flight (one at a time), and never goes back to chunk 1.
    loop, env, client, _ = make_loop(latency=lambda request: 5.0 if request.sequence in (2, 3) else 0.0)
    loop.run(26)
    seen = commanded(env)
    assert seen[:8] == [(1, k) for k in range(8)]
    assert seen[8:24] == [None] * 16  # 2 deadlines of 0.5 s = 7.5 cycles each
    for step in range(8, 24):
        assert_held(env, step)
    assert "waiting for plan 2" in loop.records[9].reason
    assert "plan 2 failed: DEADLINE_EXCEEDED" in loop.records[17].reason
    assert seen[24:] == [(4, 0), (4, 1)]
    assert [p.outcome for p in loop.plans] == ["used", "failed", "failed", "used"]
    assert [r.sequence for r in client.requests] == [1, 2, 3, 4]


def test_holds_every_cycle_while_the_server_is_unreachable():
    def script(request):
        raise FakeRpcError(grpc.StatusCode.UNAVAILABLE)

    loop, env, client, _ = make_loop(script)
    loop.run(6)
    assert commanded(env) == [None] * 6
    for step in range(6):
        assert_held(env, step)  # the current pose each time, not the first one
    assert len(client.requests) == 6 and [r.sequence for r in client.requests] == list(range(1, 7))
    assert all("UNAVAILABLE" in r.reason for r in loop.records)


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
    assert loop.plans[1].outcome == "dropped"


def test_a_late_chunk_starts_at_the_row_for_now():
    loop, env, _, _ = make_loop(latency=0.27)  # about 4 control periods
    loop.run(6)
    # The answer shows at cycle 5 (t0 + 5 dt), which aims at the next tick, t0 + 6 dt: row k is the target for
    # t0 + (1 + k) dt -> row 5. Rows 0-4 are in the past and skipped.
    assert commanded(env) == [None] * 5 + [(1, 5)]


def test_a_row_never_runs_twice_even_when_cycles_come_early():
    loop, env, _, _ = make_loop()
    loop.step()
    loop.step()  # same fake time: the row for "now" is row 0 again, but the loop moves on
    assert commanded(env) == [(1, 0), (1, 1)]


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
        clock.t += 0.2 if request.sequence == 1 else 0.0  # this cycle itself took 0.2 s (e.g. a slow camera)
        return canned_response(request)

    loop, _, _, clock = make_loop(script)
    loop.run(4)
    assert all(s > 0 for s in clock.slept)  # FakeClock.sleep also asserts this
    assert len(clock.slept) == 3  # the overrun cycle sleeps not at all, the others one period each
    assert clock.slept == pytest.approx([DT_S] * 3)


def test_the_worker_thread_keeps_real_cycles_on_time():
    """Real clock, real thread: a server taking 0.2 s never stretches a 1/15 s cycle (the old loop blocked 0.2 s)."""

    def script(request):
        time.sleep(0.2)
        return canned_response(request)

    env = FakeEnv()
    with RobotLoop(env, FakePlanClient(script), LoopConfig(instruction="go", plan_timeout_s=2.0)) as loop:
        loop.run(20)
    gaps = np.diff([r.time_s for r in loop.records])
    assert len(env.commands) == 20
    assert gaps.max() < 0.18, gaps  # 1/15 s plus scheduling slack; a cycle waiting for the answer takes >= 0.2 s
    assert sum(r.kind == "chunk" for r in loop.records) >= 8
    assert len([p for p in loop.plans if p.outcome == "used"]) >= 2


def test_config_is_checked():
    with pytest.raises(ValueError, match="instruction"):
        LoopConfig(instruction="")
    with pytest.raises(ValueError, match="open_loop_steps"):
        LoopConfig(instruction="go", open_loop_steps=0)
    with pytest.raises(ValueError, match="lead_steps"):
        LoopConfig(instruction="go", lead_steps=-2)
