"""The committed generated wire code matches what `python scripts/gen_proto.py` makes from the .proto."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("grpc_tools", reason="grpcio-tools is in the [dev] extra")

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = (ROOT / "client" / "vidplan_client" / "wire",)  # the one copy; the server imports it


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wire")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(out)], check=True, capture_output=True
    )
    return out


@pytest.mark.parametrize("target", COMMITTED, ids=["client"])
def test_committed_code_is_up_to_date(fresh, target):
    names = sorted(p.name for p in fresh.iterdir())
    assert names == ["__init__.py", "vidplan_pb2.py", "vidplan_pb2.pyi", "vidplan_pb2_grpc.py"]
    for name in names:
        committed = target / name
        assert committed.is_file(), f"{committed} is missing: run `python scripts/gen_proto.py`"
        assert committed.read_text() == (fresh / name).read_text(), (
            f"{committed} is out of date with proto/vidplan/v1/vidplan.proto: run `python scripts/gen_proto.py`"
        )


def test_grpc_module_imports_its_messages_relatively(fresh):
    text = (fresh / "vidplan_pb2_grpc.py").read_text()
    assert "from . import vidplan_pb2 as" in text
    assert "from vidplan.v1 import" not in text


def test_check_flag_reports_a_stale_copy(fresh, tmp_path):
    stale = tmp_path / "wire"
    stale.mkdir()
    for p in fresh.iterdir():
        (stale / p.name).write_text(p.read_text())
    script = [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check", "--out", str(stale)]
    assert subprocess.run(script, capture_output=True).returncode == 0
    (stale / "vidplan_pb2.py").write_text("# edited by hand\n")
    done = subprocess.run(script, capture_output=True, text=True)
    assert done.returncode == 1 and "vidplan_pb2.py" in done.stderr


def test_server_uses_the_clients_copy_of_the_contract():
    from vidplan_client.wire import vidplan_pb2 as client_pb2  # `pip install -e ./client`

    from vidplan_server.serving import grpc_convert, grpc_server

    server_pb2 = grpc_convert.pb
    assert server_pb2 is client_pb2 and grpc_server.pb is client_pb2
    assert not (ROOT / "vidplan_server" / "serving" / "wire").exists(), "the stubs have one home: the client"

    service = server_pb2.DESCRIPTOR.services_by_name["VidPlan"]
    assert [m.name for m in service.methods] == ["Plan", "StreamPlan", "GetInfo"]
    assert service.methods_by_name["StreamPlan"].client_streaming
    assert service.methods_by_name["StreamPlan"].server_streaming
    request = server_pb2.PlanRequest(session_id="s", sequence=7, options=server_pb2.PlanOptions(refine_iters=0))
    echoed = client_pb2.PlanRequest.FromString(request.SerializeToString())
    assert echoed.sequence == 7 and echoed.options.HasField("refine_iters") and echoed.options.refine_iters == 0
    assert not echoed.options.HasField("num_proposals")
