"""The load test's statistics: corrected percentiles on a constructed series, errors by status, misses, warm-up."""

from __future__ import annotations

import numpy as np
import pytest
from vidplan_client.wire import vidplan_pb2 as pb

from vidplan_server.apps.loadtest.memory import MemorySample, memory_growth, resident_bytes
from vidplan_server.apps.loadtest.ramp import Verdict, judge, ramp_result
from vidplan_server.apps.loadtest.replay import FAILED, USED
from vidplan_server.apps.loadtest.stats import LatencyRecorder
from vidplan_server.apps.loadtest.transport import Outcome


def _ok(**timings) -> Outcome:
    return Outcome("OK", response=pb.PlanResponse(timings_ms=timings))


def test_corrected_percentiles_fill_in_the_requests_a_stalled_robot_could_not_send():
    # 99 replies of 10 ms and one of 1 s, with a request expected every 100 ms: while the 1 s reply was awaited the
    # robot would have sent 9 more, answered after 900, 800, ..., 100 ms. Corrected series: 99 x 10 ms + 100..1000.
    recorder = LatencyRecorder(start_s=0.0, warmup_s=0.0, expected_interval_s=0.1, budget_ms=500.0)
    for k in range(99):
        recorder.record(0, k * 0.1, k * 0.1 + 0.010, _ok(), USED)
    recorder.record(0, 9.9, 10.9, _ok(), USED)
    summary = recorder.summary(window_s=11.0)
    corrected = np.array([10.0] * 99 + [100.0 * j for j in range(1, 11)])
    lat, raw = summary["latency_ms"], summary["latency_ms_uncorrected"]
    assert lat["count"] == 109 and raw["count"] == 100
    # HDR's percentile: the smallest value with at least round(q * count) samples at or below it (3 digits).
    for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9)):
        expected = np.sort(corrected)[max(int(q / 100 * 109 + 0.5), 1) - 1]
        assert lat[name] == pytest.approx(expected, rel=1e-3), name
    assert (lat["p50"], lat["p99"], lat["p99.9"]) == pytest.approx((10.0, 900.0, 1000.0), rel=1e-3)
    assert raw["p99"] == pytest.approx(10.0, rel=1e-3)  # uncorrected, the stall hides below the 99th percentile
    assert lat["max"] == raw["max"] == pytest.approx(1000.0, rel=1e-3)
    assert lat["mean"] == pytest.approx(corrected.mean(), rel=1e-3)
    assert summary["deadline_misses"] == 1  # the 1 s reply, over the 500 ms budget


def test_errors_are_counted_by_status_and_every_request_without_a_plan_in_time_is_a_deadline_miss():
    recorder = LatencyRecorder(start_s=0.0, warmup_s=0.0, expected_interval_s=0.5, budget_ms=300.0)
    outcomes = [
        Outcome("RESOURCE_EXHAUSTED"),
        Outcome("RESOURCE_EXHAUSTED"),
        Outcome("DEADLINE_EXCEEDED"),
        Outcome("FAILED_PRECONDITION", http_status=422),
        Outcome("DEADLINE_EXCEEDED", http_status=504),
        Outcome("CLIENT_TIMEOUT"),
        _ok(queue=5.0, plan=100.0),
        _ok(queue=15.0, plan=300.0),
    ]
    for k, outcome in enumerate(outcomes):
        latency_s = 0.4 if k == 7 else 0.2  # the last plan comes back after the 300 ms budget
        recorder.record(0, k, k + latency_s, outcome, USED if outcome.ok else FAILED)
    summary = recorder.summary(window_s=8.0)
    assert summary["errors_by_status"] == {
        "RESOURCE_EXHAUSTED": 2,
        "DEADLINE_EXCEEDED": 1,
        "422 FAILED_PRECONDITION": 1,
        "504 DEADLINE_EXCEEDED": 1,
        "CLIENT_TIMEOUT": 1,
    }
    assert summary["requests"] == 8 and summary["plans"] == 2 and summary["plans_per_s"] == 0.25
    # Every request that brought no plan within the budget: the six errors and the late plan.
    assert summary["deadline_misses"] == 7 and summary["deadline_miss_rate"] == pytest.approx(7 / 8)
    assert summary["deadline_exceeded"] == 3  # DEADLINE_EXCEEDED over gRPC and HTTP, and the client's timeout
    assert summary["error_rate"] == pytest.approx(6 / 8)
    assert summary["server_stage_ms"]["plan"]["mean"] == pytest.approx(200.0, rel=1e-3)
    assert summary["server_stage_ms"]["queue"]["count"] == 2
    assert Outcome("OK", 200, pb.PlanResponse()).key == "OK" and Outcome("UNAVAILABLE", 503).key == "503 UNAVAILABLE"


def test_requests_sent_during_the_warm_up_are_left_out():
    recorder = LatencyRecorder(start_s=10.0, warmup_s=2.0, expected_interval_s=0.5, budget_ms=300.0)
    recorder.record(0, 11.9, 13.0, Outcome("UNAVAILABLE"), FAILED)  # sent in the warm-up, answered after it
    recorder.record(0, 12.0, 12.1, _ok(), USED)
    summary = recorder.summary(window_s=5.0)
    assert summary["requests"] == 1 and summary["warmup_requests"] == 1
    assert summary["errors_by_status"] == {}
    assert [s.counted for s in recorder.samples] == [False, True]


def test_a_stage_holds_only_without_errors_and_with_p99_within_the_budget():
    assert judge(4, 480.0, {}, 500.0).held
    assert not judge(4, 520.0, {}, 500.0).held
    assert "RESOURCE_EXHAUSTED x1" in judge(4, 100.0, {"RESOURCE_EXHAUSTED": 1}, 500.0).reason
    assert not judge(4, None, {}, 500.0).held
    verdicts = [Verdict(1, True, ""), Verdict(2, True, ""), Verdict(3, False, "p99 over")]
    assert ramp_result(verdicts).as_dict() == {"max_robots_held": 2, "stopped_at": 3, "reason": "p99 over"}
    assert ramp_result([Verdict(1, False, "errors")]).max_robots_held is None
    assert ramp_result(verdicts[:2]).stopped_at is None


def test_memory_growth_is_measured_after_the_warm_up():
    text = "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes 2.5e+08\n"
    assert resident_bytes(text) == 2.5e8
    assert resident_bytes("# TYPE other gauge\nother 1\n") is None
    mb = 1024 * 1024
    samples = [MemorySample(t, (500 + (0 if t < 60 else 0.01 * (t - 60))) * mb) for t in range(0, 1800, 10)]
    samples[0] = MemorySample(0, 100 * mb)  # loading the model, before the warm-up ends
    growth = memory_growth(samples, warmup_s=60.0)
    assert growth["rss_start_mb"] == 500.0 and growth["rss_end_mb"] == pytest.approx(517.3, abs=0.1)
    assert growth["growth_mb"] == pytest.approx(17.3, abs=0.1)
    assert growth["slope_mb_per_hour"] == pytest.approx(36.0, rel=1e-3)  # 0.01 MB/s
    assert growth["growth_median_mb"] == pytest.approx(0.01 * (1790 - 60) * 3 / 4, abs=0.5)  # last vs first quarter
    assert memory_growth(samples[:3], warmup_s=60.0)["growth_mb"] is None
