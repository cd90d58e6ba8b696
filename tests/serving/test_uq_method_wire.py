"""``uq_method`` over the wire: gRPC and HTTP requests reach the real planner on a tiny bundle with every method,
GetInfo / ``/v1/info`` list the bundle's methods, and the method changes what the reply reports."""

from __future__ import annotations

import grpc
import httpx
import numpy as np
import pytest
from vidplan_client.convert import plan_options
from vidplan_client.wire import vidplan_pb2 as pb
from vidplan_client.wire import vidplan_pb2_grpc as pb_grpc

from tests.serving.conftest import LiveServer
from tests.serving.doubles import json_request, pb_request
from tests.uq_fixtures import probe_bundle_fixture  # noqa: F401 - the fixture probe_bundle
from vidplan_server.serving.config import ServiceConfig
from vidplan_server.serving.service import PlanService

OPTIONS = dict(num_proposals=4, refine_iters=0, policy_samples=0, seed=3)


@pytest.fixture
def server(probe_bundle):
    """A live server on the tiny bundle's planner whose ``plan`` records each request's ``uq_method``; no
    cross-robot batching, so every request goes through ``plan``."""
    from vidplan_server.planning.planner import Planner, PlannerConfig

    planner = Planner.load(probe_bundle, config=PlannerConfig(num_proposals=4, refine_iters=0, policy_samples=0))
    seen: list[str | None] = []
    plan = planner.plan

    def recording(request):
        seen.append(request.options.uq_method)
        return plan(request)

    planner.plan = recording
    live = LiveServer(PlanService(planner, ServiceConfig(batch_window_s=0.0))).wait_started()
    seen.clear()  # the warm-up's plans
    yield live, seen
    live.close()


def test_uq_method_round_trips_over_grpc_and_http(server):
    live, seen = server
    offered = [pb.UQ_METHOD_BINS, pb.UQ_METHOD_C3_CS, pb.UQ_METHOD_C3_FSC, pb.UQ_METHOD_SQUBED]
    with grpc.insecure_channel(live.grpc_target) as channel:
        vidplan = pb_grpc.VidPlanStub(channel)
        info = vidplan.GetInfo(pb.InfoRequest(), timeout=10)
        assert list(info.uq_methods) == offered and info.default_uq_method == pb.UQ_METHOD_BINS
        replies = {}
        for method in (None, "bins", "c3-cs", "squbed"):
            request = pb_request(**OPTIONS)
            request.options.CopyFrom(plan_options(**OPTIONS, uq_method=method))  # the client's own helper
            replies[method] = vidplan.Plan(request, timeout=60)
        with pytest.raises(grpc.RpcError) as refused:
            vidplan.Plan(pb_request(**OPTIONS, uq_method=17), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == "options.uq_method: 17 is not a valid UqMethod"
    assert seen == [None, "bins", "c3-cs", "squbed"]
    uncertainty = {method: np.array(reply.uncertainty) for method, reply in replies.items()}
    np.testing.assert_array_equal(uncertainty[None], uncertainty["bins"])  # unset = the server's default, bins
    assert not np.allclose(uncertainty["c3-cs"], uncertainty["bins"])  # the method decides what is reported
    assert not np.allclose(uncertainty["squbed"], uncertainty["bins"])

    seen.clear()
    with httpx.Client(base_url=live.http_url, timeout=60) as http:
        info = http.get("/v1/info").json()
        assert info["uq_methods"] == ["bins", "c3-cs", "c3-fsc", "squbed"] and info["default_uq_method"] == "bins"
        r = http.post("/v1/plan", json=json_request(encoding="jpeg", **OPTIONS, uq_method="c3-cs"))
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["uncertainty"], uncertainty["c3-cs"], rtol=1e-6)  # same as over gRPC
        assert http.post("/v1/plan", json=json_request(**OPTIONS, uq_method="c3-fsc")).status_code == 200
        r = http.post("/v1/plan", json=json_request(**OPTIONS, uq_method="dropout"))
        assert r.status_code == 400 and r.json()["error"]["field"] == "options.uq_method"
        schema = http.get("/openapi.json").json()["components"]["schemas"]["PlanOptions"]["properties"]
        enum = next(a for a in schema["uq_method"]["anyOf"] if a.get("type") == "string")["enum"]
        assert enum == ["bins", "c3-cs", "c3-fsc", "squbed"]
    assert seen == ["c3-cs", "c3-fsc"]


def test_the_bundle_methods_read_from_the_manifest_are_what_the_planner_offers(probe_bundle):
    """``vidplan serve --uq-method`` checks against the manifest before loading; it must agree with the planner."""
    from vidplan_server.planning.uq_methods import UQSources, bundle_methods

    assert bundle_methods(probe_bundle) == UQSources.load(probe_bundle).offered == ("bins", "c3-cs", "c3-fsc", "squbed")
