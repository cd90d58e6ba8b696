from __future__ import annotations

import pytest
from fakes import CannedVidPlan, start_server
from vidplan_client import ClientConfig, VidPlanClient


@pytest.fixture(scope="session")
def canned_server():
    servicer = CannedVidPlan()
    server, port = start_server(servicer)
    yield servicer, port
    server.stop(grace=None)


@pytest.fixture
def servicer(canned_server):
    servicer, _ = canned_server
    servicer.reset()
    return servicer


@pytest.fixture
def config(canned_server) -> ClientConfig:
    _, port = canned_server
    return ClientConfig(
        target=f"127.0.0.1:{port}", token="s3cret", plan_timeout_s=5.0, initial_backoff_s=0.01, max_backoff_s=0.02
    )


@pytest.fixture
def client(config):
    with VidPlanClient(config) as c:
        yield c
