"""Scale-out on Ray Serve: a local Ray instance runs 2 replicas of the planning service on the tiny bundle; the thin
client plans over gRPC and HTTP through Serve's proxies, the plans spread over both replicas, and overload is
answered with the documented status (HTTP 503, gRPC RESOURCE_EXHAUSTED).

Marked ``ray`` and skipped without Ray (``pip install -e '.[scale]'``); ``.ci/run`` installs it and runs it.
"""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest

from tests.serving.doubles import json_request, pb_request

ray = pytest.importorskip("ray", reason="Ray Serve is not installed (pip install -e '.[scale]')")
pytestmark = pytest.mark.ray

TOKEN = "ray-test-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_app(tiny_heads_bundle, tmp_path_factory):
    import os

    from ray import serve

    from vidplan_server.serving import ray_serve
    from vidplan_server.serving.settings import load_settings

    grpc_port, http_port = _free_port(), _free_port()
    settings = load_settings(
        {
            "ckpt": tiny_heads_bundle,
            "host": "127.0.0.1",
            "grpc_port": grpc_port,
            "http_port": http_port,
            "ray": True,
            "ray_min_replicas": 2,
            "ray_max_replicas": 2,
            "ray_cpus_per_replica": 0.5,
            "max_queue": 1,
            "ray_max_queued": 1,
            "token": TOKEN,
            "shutdown_grace": 5,
        }
    )
    saved = os.environ.get("VIDPLAN_TOKEN")
    os.environ["VIDPLAN_TOKEN"] = TOKEN  # replicas read the token from their environment, as in a cluster
    started = time.perf_counter()
    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "VIDPLAN_TOKEN": TOKEN}},
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
    )
    try:
        http_options, grpc_options = ray_serve.proxy_options(settings)
        serve.start(http_options=http_options, grpc_options=grpc_options)
        serve.run(ray_serve.build_app(settings), name=ray_serve.APP_NAME, route_prefix="/")
        ready_s = time.perf_counter() - started
        yield {"grpc": f"127.0.0.1:{grpc_port}", "http": f"http://127.0.0.1:{http_port}", "ready_s": ready_s}
    finally:
        serve.shutdown()
        ray.shutdown()
        if saved is None:
            os.environ.pop("VIDPLAN_TOKEN", None)
        else:
            os.environ["VIDPLAN_TOKEN"] = saved


def _grpc_plan(target: str, request, token: str | None = TOKEN):
    from vidplan_client.wire import vidplan_pb2_grpc as pb_grpc

    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(target) as channel:
        return pb_grpc.VidPlanStub(channel).Plan.with_call(request, timeout=60, metadata=metadata)


def test_thin_client_plans_over_grpc_and_http_on_both_replicas(ray_app):
    from vidplan_client import ClientConfig, VidPlanClient

    with VidPlanClient(ClientConfig(target=ray_app["grpc"], token=TOKEN)) as client:
        reply = client.plan(pb_request(sequence=1, t=0.0), timeout_s=60)
        assert len(reply.chunk) == 15 and reply.sequence == 1
        info = client.info(timeout_s=30)
        assert list(info.cameras) and info.request_limits.max_history >= 1
    replicas = set()
    for i in range(12):
        reply, call = _grpc_plan(ray_app["grpc"], pb_request(sequence=i + 2, t=0.2 * (i + 1)))
        assert len(reply.chunk) == 15
        replicas.add(dict(call.trailing_metadata())["x-vidplan-replica"])
    headers = {"authorization": f"Bearer {TOKEN}"}
    for i in range(12):
        response = httpx.post(
            f"{ray_app['http']}/v1/plan", json=json_request(sequence=i + 1, t=0.2 * i), headers=headers, timeout=60
        )
        assert response.status_code == 200, response.text
        assert len(response.json()["chunk"]) == 15
        replicas.add(response.headers["x-vidplan-replica"])
    assert len(replicas) == 2, replicas  # Serve spread the plans over both replicas


def test_the_token_is_enforced_on_both_transports(ray_app):
    with pytest.raises(grpc.RpcError) as info:
        _grpc_plan(ray_app["grpc"], pb_request(), token="wrong")
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    response = httpx.post(f"{ray_app['http']}/v1/plan", json=json_request(), timeout=30)
    assert response.status_code == 401 and response.json()["error"]["code"] == "UNAUTHENTICATED"


def test_overload_is_refused_with_the_documented_status(ray_app):
    """2 replicas x (1 planning + max_queue 1) + 1 held by Serve: a burst of 16 slow plans overflows."""
    heavy = {"num_proposals": 24, "refine_iters": 3, "flow_steps": 2}
    headers = {"authorization": f"Bearer {TOKEN}"}

    def http_plan(i: int) -> int:
        body = json_request(sequence=i + 1, t=0.2 * i, **heavy)
        return httpx.post(f"{ray_app['http']}/v1/plan", json=body, headers=headers, timeout=120).status_code

    def grpc_plan(i: int):
        try:
            _grpc_plan(ray_app["grpc"], pb_request(sequence=i + 1, t=0.2 * i, **heavy))
            return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            return exc.code()

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(http_plan, range(16)))
    assert set(statuses) <= {200, 503} and statuses.count(503) >= 1 and statuses.count(200) >= 2, statuses
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(grpc_plan, range(16)))
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 1 and codes.count(grpc.StatusCode.OK) >= 2


def test_settings_map_to_serve_options():
    from vidplan_server.serving import ray_serve
    from vidplan_server.serving.settings import load_settings

    fixed = ray_serve.deployment_options(load_settings({"ray_min_replicas": 2, "ray_max_replicas": 2}))
    assert fixed["num_replicas"] == 2 and "autoscaling_config" not in fixed
    assert fixed["max_ongoing_requests"] == 5 and fixed["ray_actor_options"] == {"num_cpus": 1.0}
    scaled = ray_serve.deployment_options(
        load_settings({"ray_max_replicas": 4, "ray_gpus_per_replica": 1, "max_queue": 2})
    )
    assert scaled["autoscaling_config"]["min_replicas"] == 1 and scaled["autoscaling_config"]["max_replicas"] == 4
    assert scaled["ray_actor_options"]["num_gpus"] == 1 and scaled["max_ongoing_requests"] == 3
    with pytest.raises(ValueError, match="ray_min_replicas"):
        load_settings({"ray_min_replicas": 0})
    assert "token" not in ray_serve.replica_settings(load_settings({"token": "t"}))
