"""gRPC and HTTP on real localhost ports over a stub planner: status codes, auth, health, shutdown, TLS."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import threading
import time

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from vidplan_client.wire import vidplan_pb2 as pb
from vidplan_client.wire import vidplan_pb2_grpc as pb_grpc

from tests.serving.doubles import json_request, pb_request

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _health(channel, service: str = "") -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def _wait_for(predicate, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def test_bad_requests_get_the_same_message_on_both_transports(serve, stub):
    server = serve()
    bad = pb_request(encoding="png")
    bad.observation.frames[2].data = b"\x89PNG\r\n\x1a\n broken"
    body = json_request(encoding="png")
    body["observation"]["frames"][2]["data"] = base64.b64encode(b"\x89PNG\r\n\x1a\n broken").decode()
    with grpc.insecure_channel(server.grpc_target) as channel:
        plan = pb_grpc.VidPlanStub(channel).Plan
        with pytest.raises(grpc.RpcError) as info:
            plan(bad, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        grpc_message = info.value.details()
        assert grpc_message == "observation.frames[wrist_image_left].data: not a decodable PNG image"
        stub.unsafe = True
        with pytest.raises(grpc.RpcError) as info:
            plan(pb_request(), timeout=10)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "z below workspace" in info.value.details()
        assert plan(pb_request(sequence=9), timeout=10).sequence == 9  # and the server goes on
    with httpx.Client(base_url=server.http_url, timeout=10) as http:
        r = http.post("/v1/plan", json=body)
        assert r.status_code == 400 and r.json()["error"]["message"] == grpc_message
        assert r.json()["error"]["field"] == "observation.frames[wrist_image_left].data"
        nan = json_request()
        r = http.post(
            "/v1/plan",
            content=httpx.Request("POST", "/", json=nan)
            .content.replace(b'"gripper_position": 0.0', b'"gripper_position": NaN')
            .replace(b'"gripper_position":0.0', b'"gripper_position":NaN'),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 400 and r.json()["error"]["field"] == "observation.state.gripper_position"
        r = http.post("/v1/plan", json={**json_request(), "instructions": "typo"})
        assert r.status_code == 400 and r.json()["error"]["field"] == "instructions"
        stub.unsafe = True
        r = http.post("/v1/plan", json=json_request())
        assert r.status_code == 422 and r.json()["error"]["violations"] == ["step 3: z below workspace"]


def test_overload_and_deadlines(serve, stub):
    server = serve(max_queue=1)
    stub.gate = threading.Event()
    with grpc.insecure_channel(server.grpc_target) as channel, httpx.Client(base_url=server.http_url) as http:
        plan = pb_grpc.VidPlanStub(channel).Plan
        running = plan.future(pb_request(t=0.0), timeout=20)
        assert stub.started.wait(5)
        waiting = plan.future(pb_request(t=0.1), timeout=20)
        _wait_for(lambda: server.service.worker.waiting == 1)
        with pytest.raises(grpc.RpcError) as info:
            plan(pb_request(t=0.2), timeout=5)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue full" in info.value.details()
        assert dict(info.value.trailing_metadata())["retry-after"] == "1"
        r = http.post("/v1/plan", json=json_request(), timeout=5)
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
        readyz = http.get("/readyz")
        assert readyz.status_code == 503 and readyz.json()["reasons"] == ["planner queue saturated"]
        stub.gate.set()
        assert [running.result().stamp.t0_s, waiting.result().stamp.t0_s] == [0.0, 0.1]
        assert http.get("/readyz").status_code == 200

        # A deadline that passes while queued: refused without planning (DEADLINE_EXCEEDED / 504).
        stub.gate.clear()
        stub.started.clear()
        running = plan.future(pb_request(t=1.0), timeout=20)
        assert stub.started.wait(5)
        late = plan.future(pb_request(t=1.1, deadline_ms=50), timeout=20)
        time.sleep(0.15)
        stub.gate.set()
        running.result()
        with pytest.raises(grpc.RpcError) as info:
            late.result()
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert info.value.details().startswith("deadline: passed while the request waited")
        # A gRPC deadline reaches the planner as PlanOptions.deadline_s.
        plan(pb_request(t=2.0), timeout=7.0)
        assert 6.0 < stub.requests[-1].options.deadline_s < 7.1  # gRPC rounds the timeout header up


def test_bearer_token(serve):
    server = serve(token="s3cret")
    with grpc.insecure_channel(server.grpc_target) as channel:
        vidplan = pb_grpc.VidPlanStub(channel)
        for rpc, request in ((vidplan.Plan, pb_request()), (vidplan.GetInfo, pb.InfoRequest())):
            with pytest.raises(grpc.RpcError) as info:
                rpc(request, timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert info.value.details() == "authorization: missing or wrong bearer token"
        with pytest.raises(grpc.RpcError) as info:
            vidplan.Plan(pb_request(), timeout=5, metadata=(("authorization", "Bearer wrong"),))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        stream = vidplan.StreamPlan(iter([pb_request()]), timeout=5)
        with pytest.raises(grpc.RpcError) as info:
            list(stream)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ok = vidplan.Plan(pb_request(), timeout=5, metadata=(("authorization", "Bearer s3cret"),))
        assert len(ok.chunk) == 15
        # the scheme is case-insensitive (RFC 7235); the token is not
        assert (
            len(vidplan.GetInfo(pb.InfoRequest(), timeout=5, metadata=(("authorization", "bearer s3cret"),)).cameras)
            == 3
        )
        with pytest.raises(grpc.RpcError) as info:
            vidplan.GetInfo(pb.InfoRequest(), timeout=5, metadata=(("authorization", "Bearer S3CRET"),))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert _health(channel) == SERVING  # health needs no token
    with httpx.Client(base_url=server.http_url, timeout=5) as http:
        r = http.post("/v1/plan", json=json_request())
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert http.get("/v1/info").status_code == 401
        assert http.post("/v1/plan", json=json_request(), headers={"authorization": "Bearer s3cret"}).status_code == 200
        assert http.get("/v1/info", headers={"authorization": "BEARER s3cret"}).status_code == 200
        assert http.get("/livez").status_code == 200 and http.get("/readyz").status_code == 200


def test_health_and_readiness_follow_warmup_and_shutdown(serve, stub):
    stub.warmup_gate = threading.Event()
    server = serve(wait=False)
    with grpc.insecure_channel(server.grpc_target) as channel, httpx.Client(base_url=server.http_url) as http:
        plan = pb_grpc.VidPlanStub(channel).Plan
        _wait_for(lambda: _try(lambda: http.get("/livez").status_code) == 200)
        # Listening but warming up: alive, not ready, health NOT_SERVING, plans refused.
        assert _health(channel) == NOT_SERVING and _health(channel, "vidplan.v1.VidPlan") == NOT_SERVING
        readyz = http.get("/readyz")
        assert readyz.status_code == 503 and readyz.json()["reasons"] == ["model not warmed up"]
        with pytest.raises(grpc.RpcError) as info:
            plan(pb_request(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "warming up" in info.value.details()
        stub.warmup_gate.set()
        server.wait_started()
        assert _health(channel) == SERVING and _health(channel, "vidplan.v1.VidPlan") == SERVING
        assert http.get("/readyz").status_code == 200

        # Shutdown with one plan in flight: health flips first, new requests are refused, the in-flight one ends.
        stub.gate = threading.Event()
        in_flight = plan.future(pb_request(sequence=7), timeout=20)
        http_in_flight = threading.Thread(
            target=lambda: results.append(
                httpx.post(f"{server.http_url}/v1/plan", json=json_request(sequence=8), timeout=20)
            )
        )
        results: list[httpx.Response] = []
        assert stub.started.wait(5)
        http_in_flight.start()
        _wait_for(lambda: server.service.in_flight == 2)
        done = server.begin_shutdown()
        _wait_for(lambda: _health(channel) == NOT_SERVING)
        with pytest.raises(grpc.RpcError) as info:
            plan(pb_request(sequence=9), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in info.value.details()
        refused = http.post("/v1/plan", json=json_request(sequence=10), timeout=5)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "UNAVAILABLE"
        assert http.get("/readyz").json()["reasons"] == ["shutting down"]
        assert not done.done()
        stub.gate.set()
        assert in_flight.result().sequence == 7
        http_in_flight.join(10)
        assert results[0].status_code == 200 and results[0].json()["sequence"] == 8
        done.result(15)
    assert server.service.in_flight == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.http_url}/livez", timeout=1)


def _try(fn):
    try:
        return fn()
    except Exception:
        return None


def test_stream_answers_a_bad_request_in_band_and_goes_on(serve, stub):
    server = serve()
    bad = pb_request(sequence=2, t=0.1)
    bad.observation.state.joint_position[0] = float("inf")
    requests = [pb_request(sequence=1, t=0.0, session="s"), bad, pb_request(sequence=3, t=0.2, session="s")]
    bad.session_id = "s"

    def paced():
        for r in requests:
            yield r
            time.sleep(0.05)  # let each be planned (the stub answers at once), so none is dropped

    with grpc.insecure_channel(server.grpc_target) as channel:
        replies = list(pb_grpc.VidPlanStub(channel).StreamPlan(paced(), timeout=10))
    assert [r.sequence for r in replies] == [1, 2, 3]
    assert replies[1].HasField("error") and replies[1].error.code == "INVALID_ARGUMENT"
    assert replies[1].error.message.startswith("observation.state.joint_position: element 0 is inf")
    assert not replies[0].HasField("error") and len(replies[2].chunk) == 15
    assert all(r.session_id == "s" for r in replies)


def test_a_stream_refuses_another_session_and_goes_on(serve, stub):
    server = serve()
    requests = [
        pb_request(sequence=1, t=0.0, session="robot-a"),
        pb_request(sequence=2, t=0.1, session="robot-b"),
        pb_request(sequence=3, t=0.2, session="robot-a"),
    ]

    def paced():
        for r in requests:
            yield r
            time.sleep(0.05)

    with grpc.insecure_channel(server.grpc_target) as channel:
        replies = list(pb_grpc.VidPlanStub(channel).StreamPlan(paced(), timeout=10))
    assert [r.sequence for r in replies] == [1, 2, 3]
    assert replies[1].error.code == "INVALID_ARGUMENT"
    assert replies[1].error.message.startswith("session_id: 'robot-b' is unknown on this stream")
    assert not replies[2].HasField("error") and len(replies[2].chunk) == 15


def test_large_raw_messages_fit(serve, stub):
    server = serve()
    request = pb_request(encoding="raw", t=10.0, size=(360, 640))
    for k in range(6):  # 7 observations of three raw 360x640 views: 14.5 MB, above gRPC's 4 MB default
        past = request.history.add()
        past.CopyFrom(request.observation)
        past.timestamp_s = 10.0 - (6 - k) / 15
        past.ClearField("state")
    assert request.ByteSize() > 4 * 2**20
    with grpc.insecure_channel(server.grpc_target, options=[("grpc.max_send_message_length", 64 * 2**20)]) as channel:
        reply = pb_grpc.VidPlanStub(channel).Plan(request, timeout=20)
    assert reply.stamp.t0_s == 10.0 and stub.requests[-1].history.shape == (2, 3, 64, 64, 3)


def test_info_metrics_docs_and_reflection(serve):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    server = serve()
    with grpc.insecure_channel(server.grpc_target) as channel:
        info = pb_grpc.VidPlanStub(channel).GetInfo(pb.InfoRequest(), timeout=5)
        assert list(info.cameras) == ["exterior_image_1_left", "exterior_image_2_left", "wrist_image_left"]
        assert (info.image_height, info.history, info.chunk_steps) == (64, 2, 15)
        assert list(info.limits.workspace_max_m) == [1.0, 0.4, 1.0] and info.limits.gripper_max == 1.0
        pb_grpc.VidPlanStub(channel).Plan(pb_request(), timeout=5)
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for r in reflect for s in r.list_services_response.service}
        assert {"vidplan.v1.VidPlan", "grpc.health.v1.Health"} <= names
    with httpx.Client(base_url=server.http_url, timeout=5) as http:
        assert http.get("/v1/info").json()["cameras"][2] == "wrist_image_left"
        assert http.post("/v1/plan", json=json_request()).status_code == 200
        metrics = http.get("/metrics").text
        assert 'vidplan_requests_total{call="plan",outcome="ok",transport="grpc"} 1.0' in metrics
        assert 'vidplan_requests_total{call="plan",outcome="ok",transport="http"} 1.0' in metrics
        assert 'vidplan_stage_seconds_bucket{le="0.0667",stage="plan"}' in metrics
        assert "vidplan_queue_depth 0.0" in metrics and "vidplan_sessions" in metrics
        assert 'http_requests_total{handler="/v1/plan",method="POST",status="2xx"} 1.0' in metrics
        assert "/v1/plan" in http.get("/openapi.json").json()["paths"]


def test_policy_mode_and_proposal_mix_on_both_transports(serve, stub):
    """A bundle with a policy: GetInfo / /v1/info list both modes; mode policy answers with the policy's own chunk
    (per-frame fields empty, confidence 0) and the proposal mix reaches the planner, unset = the server's default."""
    stub.policy = True
    server = serve()
    with grpc.insecure_channel(server.grpc_target) as channel:
        vidplan = pb_grpc.VidPlanStub(channel)
        assert list(vidplan.GetInfo(pb.InfoRequest(), timeout=5).modes) == [pb.PLAN_MODE_PLAN, pb.PLAN_MODE_POLICY]
        reply = vidplan.Plan(pb_request(mode=pb.PLAN_MODE_POLICY, policy_samples=3, seed=5), timeout=10)
        assert list(reply.proposal_kinds) == ["policy:0"] and reply.confidence == 0.0 and len(reply.chunk) == 15
        assert not reply.uncertainty and not reply.value and "mode policy" in reply.notes[0]
        vidplan.Plan(pb_request(policy_samples=0, policy_perturbations=4), timeout=10)
        vidplan.Plan(pb_request(), timeout=10)  # mode unset = plan; counts unset = the server's defaults
    with httpx.Client(base_url=server.http_url, timeout=10) as http:
        assert http.get("/v1/info").json()["modes"] == ["plan", "policy"]
        r = http.post("/v1/plan", json=json_request(mode="policy", policy_perturbations=2))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["proposal_kinds"] == ["policy:0"] and body["confidence"] == 0.0 and body["value"] == []
        assert http.post("/v1/plan", json=json_request(mode="plan", policy_samples=64)).status_code == 200
        schema = http.get("/openapi.json").json()["components"]["schemas"]["PlanOptions"]["properties"]
        assert schema["mode"]["enum"] == ["plan", "policy"]
        assert next(a for a in schema["policy_samples"]["anyOf"] if a["type"] == "integer")["maximum"] == 64
    got = [(o.mode, o.policy_samples, o.policy_perturbations, o.seed) for o in stub.options]
    assert got == [
        ("policy", 3, None, 5),
        ("plan", 0, 4, 0),
        ("plan", None, None, 0),
        ("policy", None, 2, 0),
        ("plan", 64, None, 0),
    ]


def test_policy_mode_without_a_policy_is_invalid_argument_on_both_transports(serve, stub):
    server = serve()
    expected = (
        "options.mode: 'policy' is not offered by this server (its model bundle has no policy; GetInfo modes: plan)"
    )
    with grpc.insecure_channel(server.grpc_target) as channel:
        vidplan = pb_grpc.VidPlanStub(channel)
        assert list(vidplan.GetInfo(pb.InfoRequest(), timeout=5).modes) == [pb.PLAN_MODE_PLAN]
        with pytest.raises(grpc.RpcError) as info:
            vidplan.Plan(pb_request(mode=pb.PLAN_MODE_POLICY), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and info.value.details() == expected
        with pytest.raises(grpc.RpcError) as info:
            vidplan.Plan(pb_request(mode=7), timeout=10)  # proto3 enums are open: a number without a name
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == "options.mode: 7 is not a valid PlanMode"
        assert vidplan.Plan(pb_request(mode=pb.PLAN_MODE_PLAN), timeout=10).proposal_kinds == ["stub"]
    with httpx.Client(base_url=server.http_url, timeout=10) as http:
        assert http.get("/v1/info").json()["modes"] == ["plan"]
        r = http.post("/v1/plan", json=json_request(mode="policy"))
        assert r.status_code == 400 and r.json()["error"] == {
            "code": "INVALID_ARGUMENT",
            "message": expected,
            "field": "options.mode",
            "violations": [],
        }
        r = http.post("/v1/plan", json=json_request(mode="dream"))
        assert r.status_code == 400 and r.json()["error"]["field"] == "options.mode"
        schema = http.get("/openapi.json").json()["components"]["schemas"]["PlanOptions"]["properties"]
        assert schema["mode"]["enum"] == ["plan"]
    assert [o.mode for o in stub.options] == ["plan"]  # refused before the planner


def test_a_uq_method_unknown_or_not_in_the_bundle_is_invalid_argument_on_both_transports(serve, stub):
    """The stub's bundle offers bins only: GetInfo / /v1/info say so, and another method, or one without a name, is
    refused before the planner with the field named; the same message on both transports."""
    server = serve()
    missing = "options.uq_method: 'c3-cs' needs its module in the checkpoint"
    with grpc.insecure_channel(server.grpc_target) as channel:
        vidplan = pb_grpc.VidPlanStub(channel)
        info = vidplan.GetInfo(pb.InfoRequest(), timeout=5)
        assert list(info.uq_methods) == [pb.UQ_METHOD_BINS] and info.default_uq_method == pb.UQ_METHOD_BINS
        with pytest.raises(grpc.RpcError) as refused:
            vidplan.Plan(pb_request(uq_method=pb.UQ_METHOD_C3_CS), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        grpc_message = refused.value.details()
        assert grpc_message.startswith(missing) and grpc_message.endswith("offered: bins")
        with pytest.raises(grpc.RpcError) as refused:
            vidplan.Plan(pb_request(uq_method=9), timeout=10)  # proto3 enums are open: a number without a name
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == "options.uq_method: 9 is not a valid UqMethod"
        vidplan.Plan(pb_request(uq_method=pb.UQ_METHOD_BINS), timeout=10)
    with httpx.Client(base_url=server.http_url, timeout=10) as http:
        info = http.get("/v1/info").json()
        assert info["uq_methods"] == ["bins"] and info["default_uq_method"] == "bins"
        r = http.post("/v1/plan", json=json_request(uq_method="c3-cs"))
        assert r.status_code == 400 and r.json()["error"] == {
            "code": "INVALID_ARGUMENT",
            "message": grpc_message,
            "field": "options.uq_method",
            "violations": [],
        }
        r = http.post("/v1/plan", json=json_request(uq_method="dropout"))
        assert r.status_code == 400 and r.json()["error"]["field"] == "options.uq_method"
        assert http.post("/v1/plan", json=json_request()).status_code == 200
        schema = http.get("/openapi.json").json()["components"]["schemas"]["PlanOptions"]["properties"]
        assert next(a for a in schema["uq_method"]["anyOf"] if a.get("type") == "string")["enum"] == ["bins"]
    assert [o.uq_method for o in stub.options] == ["bins", None]  # only the offered ones reached the planner


def _self_signed(tmp_path):
    """A throw-away certificate for 127.0.0.1, made with the openssl command line tool."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls_on_both_transports(serve, tmp_path):
    cert, key = _self_signed(tmp_path)
    server = serve(tls_cert=cert, tls_key=key)
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    with grpc.secure_channel(server.grpc_target, credentials) as channel:
        assert len(pb_grpc.VidPlanStub(channel).Plan(pb_request(), timeout=10).chunk) == 15
    with grpc.insecure_channel(server.grpc_target) as channel, pytest.raises(grpc.RpcError):
        pb_grpc.VidPlanStub(channel).GetInfo(pb.InfoRequest(), timeout=2)
    assert server.http_url.startswith("https://")
    assert httpx.get(f"{server.http_url}/livez", verify=str(cert), timeout=5).status_code == 200


def test_an_oversized_http_body_is_refused_before_parsing(serve, stub):
    body = json_request()
    limit = (len(json.dumps(body)) // 3 + 1000) * 4  # HTTP allows 4/3 of gRPC's max_message_bytes
    server = serve(max_message_bytes=limit * 3 // 4)
    big = dict(body, instruction="x" * limit)
    with httpx.Client(base_url=server.http_url, timeout=5) as http:
        r = http.post("/v1/plan", json=big)
        assert r.status_code == 413
        message = r.json()["error"]["message"]
        assert message.startswith("body: ") and f"limit of {limit} bytes" in message

        def chunked():  # no Content-Length: counted while it streams in
            data = json.dumps(big).encode()
            for i in range(0, len(data), 8192):
                yield data[i : i + 8192]

        r = http.post("/v1/plan", content=chunked(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        planned = len(stub.requests)
        assert http.post("/v1/plan", json=body).status_code == 200  # and the server goes on serving
        assert len(stub.requests) == planned + 1


def test_the_reference_rows_reach_the_planner_on_both_transports(serve, stub):
    """A request's reference goes through both wires as (R, 7) rows; a row of another width is INVALID_ARGUMENT /
    400 naming ``reference``, refused before the planner."""
    rows = [[0.45, 0.0, 0.38, 3.14, 0.0, 0.0, 0.0], [0.46, 0.0, 0.38, 3.14, 0.0, 0.0, 1.0]]
    server = serve()
    with grpc.insecure_channel(server.grpc_target) as channel:
        vidplan = pb_grpc.VidPlanStub(channel)
        request = pb_request()
        request.reference.extend(pb.ActionRow(values=r) for r in rows)
        vidplan.Plan(request, timeout=10)
        bad = pb_request(sequence=2)
        bad.reference.add(values=[0.0] * 6)
        with pytest.raises(grpc.RpcError) as err:
            vidplan.Plan(bad, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "reference" in err.value.details()
    with httpx.Client(base_url=server.http_url, timeout=10) as http:
        assert http.post("/v1/plan", json={**json_request(), "reference": rows}).status_code == 200
        r = http.post("/v1/plan", json={**json_request(sequence=2), "reference": [[0.0] * 8]})
        assert r.status_code == 400 and r.json()["error"]["field"].startswith("reference"), r.text
    assert len(stub.references) == 2
    for got in stub.references:
        assert got is not None and got.shape == (2, 7) and abs(got - rows).max() < 1e-12
