"""What operators read: /metrics (process, Python, build info, latency per transport, non-nesting stages) and the
log in text or JSON lines (request fields, never the token)."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import httpx
import pytest

from tests.serving.doubles import StubPlanner, call
from vidplan_server.serving.errors import InvalidArgument
from vidplan_server.serving.logs import JsonFormatter, RedactSecrets, configure_logging
from vidplan_server.serving.messages import Options


@pytest.fixture
def stub():
    return StubPlanner(stages_ms={"encode": 5.0, "propose": 1.0, "rollout": 10.0, "score": 4.0})


def test_metrics_have_process_python_build_info_and_latency_per_transport(make_service):
    from vidplan_server import __version__

    service = make_service()
    asyncio.run(service.plan(call(session="robot-1"), transport="grpc"))
    asyncio.run(service.plan(call(sequence=2, t=0.2, session="robot-1"), transport="http"))
    sample = service.metrics.registry.get_sample_value
    assert sample("process_resident_memory_bytes") > 1e6
    assert sample("process_cpu_seconds_total") > 0
    assert sample("python_gc_collections_total", {"generation": "0"}) is not None
    assert any(m.name == "python_info" for m in service.metrics.registry.collect())
    assert (
        sample(
            "vidplan_build_info",
            {
                "version": __version__,
                "model_version": "stub@0",
                "python": __import__("platform").python_version(),
                "device": "",
            },
        )
        == 1
    )
    for transport in ("grpc", "http"):
        assert sample("vidplan_request_seconds_count", {"transport": transport, "call": "plan"}) == 1
    stages = {
        s.labels["stage"]
        for m in service.metrics.registry.collect()
        if m.name == "vidplan_stage_seconds"
        for s in m.samples
    }
    planner_stages = {
        s.labels["stage"]
        for m in service.metrics.registry.collect()
        if m.name == "vidplan_planner_stage_seconds"
        for s in m.samples
    }
    assert stages == {"decode", "queue", "plan"}  # parts of a request, none inside another
    assert planner_stages == {"encode", "propose", "rollout", "score"}  # parts of "plan"; no "total"


def test_refused_requests_count_but_add_no_latency(make_service):
    service = make_service()
    with pytest.raises(InvalidArgument):
        asyncio.run(service.plan(call(instruction=" "), transport="grpc"))
    sample = service.metrics.registry.get_sample_value
    assert sample("vidplan_requests_total", {"transport": "grpc", "call": "plan", "outcome": "invalid_argument"}) == 1
    assert not sample("vidplan_request_seconds_count", {"transport": "grpc", "call": "plan"})


def test_metrics_over_http_show_the_new_families(serve):
    server = serve()
    text = httpx.get(f"{server.http_url}/metrics", timeout=5).text
    for family in (
        "process_resident_memory_bytes",
        "python_info",
        "vidplan_build_info",
        "vidplan_request_seconds",
        "vidplan_planner_stage_seconds",
    ):
        assert f"# TYPE {family}" in text or f"# HELP {family}" in text, family


def test_access_log_lines_carry_request_fields_and_no_frames(make_service, caplog):
    service = make_service(access_log=True)
    with caplog.at_level(logging.INFO, logger="vidplan_server.serving.access"):
        asyncio.run(service.plan(call(session="robot-7", sequence=3), transport="http"))
        for i in range(8):  # refusals: rate-limited, not one line each
            with pytest.raises(InvalidArgument):
                asyncio.run(
                    service.plan(
                        call(sequence=10 + i, instruction=" ", options=Options(num_proposals=6)), transport="grpc"
                    )
                )
    lines = [r for r in caplog.records if r.name == "vidplan_server.serving.access"]
    ok = [r for r in lines if r.outcome == "ok"]
    refused = [r for r in lines if r.outcome == "invalid_argument"]
    assert len(ok) == 1 and 1 <= len(refused) <= 5
    record = ok[0]
    assert (record.session, record.sequence, record.transport, record.call) == ("'robot-7'", 3, "http", "plan")
    assert record.latency_ms >= 0 and len(record.request_id) == 16
    assert all(len(r.getMessage()) < 300 for r in lines)  # never a request body
    formatted = json.loads(JsonFormatter().format(record))
    assert formatted["outcome"] == "ok" and formatted["session"] == "'robot-7'" and formatted["level"] == "info"


def test_access_log_is_off_by_default(make_service, caplog):
    service = make_service()
    with caplog.at_level(logging.INFO, logger="vidplan_server.serving.access"):
        asyncio.run(service.plan(call()))
    assert not [r for r in caplog.records if r.name == "vidplan_server.serving.access"]


def test_json_lines_never_show_the_token():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("info", "json", secrets=["tok-123"], stream=stream)
        logging.getLogger("vidplan_server.test").warning("configured with tok-123 %s", "and more")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("vidplan_server.test").exception("failed")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["message"] == "configured with <redacted> and more" and lines[0]["level"] == "warning"
    assert lines[0]["logger"] == "vidplan_server.test" and lines[0]["time"].endswith("+00:00")
    assert "RuntimeError: boom" in lines[1]["exception"]
    assert "tok-123" not in stream.getvalue()


def test_redaction_without_secrets_changes_nothing():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "a %s", ("b",), None)
    assert RedactSecrets([None, ""]).filter(record) and record.getMessage() == "a b"
