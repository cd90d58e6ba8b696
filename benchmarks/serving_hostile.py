"""Hostile and unlucky clients against a real server: the figures of issue 14, before and after.

    python benchmarks/serving_hostile.py --out outputs/bench/serving_hostile.json [--label after]

Starts ``vidplan serve``'s server (PlanService + VidPlanServer on the bundled checkpoint, CPU, localhost
ephemeral ports, ``max_queue`` 8) in a child process, so that its memory is measured alone, and sends it
what a hostile or unlucky client would. Only the wire contract is used (gRPC ``Plan`` and ``POST /v1/plan``),
so the same script measures an older checkout too: ``PYTHONPATH=/path/to/old/checkout python
benchmarks/serving_hostile.py --label before``.

The child's planner is the real one wrapped so that a request whose instruction is ``block:<seconds>``
holds the planner thread that long first (a stand-in for a long plan), and every plan that starts is
counted (to see which calls were planned although their client had given up). Cases:

- ``amplified_4096``: one Plan carrying 64 history observations of three uniform 4096x4096 PNGs (about
  60 kB each, 11 MB in all): time to its answer, and the latency of a cheap plan sent 0.2 s after it;
- ``amplified_720p``: the same with 1280x720 PNGs (a legal size), and ``history_6_720p`` with 6 of them
  (server-side ``decode`` ms from the reply's timings);
- ``deadline_100ms``: a Plan with ``deadline_ms`` 100 sent while a 2 s plan runs: time to its
  DEADLINE_EXCEEDED over gRPC and over HTTP; ``deadline_2s``: a 2 s deadline behind a 4 s plan;
- ``http_150ms_under_load``: 7 concurrent HTTP plans with 150 ms deadlines behind a 3 s plan (p50, p95);
- ``gave_up``: 3 gRPC calls with a 0.3 s timeout and 3 HTTP calls whose client hangs up after 0.3 s, all
  queued behind a 2 s plan: how many of them were planned anyway;
- ``session_ids``: server RSS before and after 100 refused requests each naming a new 3 MB session id, and after
  100 more (memory kept grows with each round; freed memory the allocator holds on to does not);
- ``malformed``: the gRPC status of corrupt protobuf bytes.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

CAMERAS = ("exterior_image_1_left", "exterior_image_2_left", "wrist_image_left")
Q_HOME = [0.0, -0.35, 0.0, -2.3, 0.0, 1.95, np.pi / 4]
POSE_HOME = [0.444403, 0.0, 0.380621, np.pi, 0.0, 0.0]
CHEAP = {"num_proposals": 6, "refine_iters": 0, "flow_steps": 1}


# ------------------------------------------------------------------------------------------------ child: the server
class _CountingPlanner:
    """The real planner; ``block:<s>`` instructions hold the planner thread ``s`` seconds first."""

    def __init__(self, planner, count_file: Path) -> None:
        self._planner = planner
        self._count_file = count_file
        self._count = 0

    def __getattr__(self, name):
        return getattr(self._planner, name)

    def info(self):
        return self._planner.info()

    def warmup(self) -> None:
        self._planner.warmup()

    def plan(self, request):
        from dataclasses import replace

        self._count += 1
        self._count_file.write_text(str(self._count))
        if request.instruction.startswith("block:"):
            time.sleep(float(request.instruction.split(":", 1)[1]))
            request = replace(request, instruction="put the red cube in the tray")
        return self._planner.plan(request)


def child(ready_file: Path, count_file: Path) -> None:
    import asyncio

    import torch

    from vidplan_server.planning.planner import Planner
    from vidplan_server.serving.config import ServerConfig, ServiceConfig
    from vidplan_server.serving.server import VidPlanServer
    from vidplan_server.serving.service import PlanService

    torch.set_num_threads(max(1, (os.cpu_count() or 2)))
    planner = _CountingPlanner(Planner.load(None, device="cpu"), count_file)
    service = PlanService(planner, ServiceConfig(max_queue=8))

    async def main() -> None:
        server = VidPlanServer(service, ServerConfig(host="127.0.0.1", grpc_port=0, http_port=0, log_level="error"))
        task = asyncio.create_task(server.serve_until_signal())
        while not service.warmed_up:
            await asyncio.sleep(0.05)
        ready_file.write_text(json.dumps({"grpc": server.grpc_port, "http": server.http_port, "pid": os.getpid()}))
        await task

    asyncio.run(main())


# ------------------------------------------------------------------------------------------------ parent: clients
def _png(h: int, w: int, value: int = 120) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", np.full((h, w, 3), value, np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok
    return buf.tobytes()


def _jpeg(h: int = 180, w: int = 320, value: int = 90) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", np.full((h, w, 3), value, np.uint8))
    assert ok
    return buf.tobytes()


def pb_request(
    pb,
    t: float = 10.0,
    instruction: str = "put the red cube in the tray",
    session: str = "",
    sequence: int = 1,
    image: tuple[bytes, int, int] | None = None,
    history: int = 0,
    history_image: tuple[bytes, int, int] | None = None,
    **options,
):
    data, h, w = image or (_jpeg(), 180, 320)
    enc = pb.IMAGE_ENCODING_PNG if data[:4] == b"\x89PNG" else pb.IMAGE_ENCODING_JPEG

    def obs(ts, img, with_state):
        d, hh, ww = img
        e = pb.IMAGE_ENCODING_PNG if d[:4] == b"\x89PNG" else pb.IMAGE_ENCODING_JPEG
        o = pb.Observation(
            timestamp_s=ts, frames=[pb.CameraFrame(camera=c, encoding=e, height=hh, width=ww, data=d) for c in CAMERAS]
        )
        if with_state:
            o.state.CopyFrom(pb.RobotState(joint_position=Q_HOME, cartesian_position=POSE_HOME, gripper_position=0.0))
        return o

    del enc
    request = pb.PlanRequest(
        session_id=session,
        sequence=sequence,
        instruction=instruction,
        observation=obs(t, (data, h, w), True),
        options=pb.PlanOptions(**{**CHEAP, **options}),
    )
    for k in range(history):
        request.history.append(obs(t - (history - k) / 15, history_image or (data, h, w), False))
    return request


def json_request(instruction: str = "put the red cube in the tray", t: float = 10.0, **options) -> dict:
    data = base64.b64encode(_jpeg()).decode()
    return {
        "instruction": instruction,
        "observation": {
            "timestamp_s": t,
            "frames": [{"camera": c, "encoding": "jpeg", "height": 180, "width": 320, "data": data} for c in CAMERAS],
            "state": {"joint_position": Q_HOME, "cartesian_position": POSE_HOME, "gripper_position": 0.0},
        },
        "options": {**CHEAP, **options},
    }


class Client:
    def __init__(self, ports: dict) -> None:
        import grpc
        import httpx
        from vidplan_client.wire import vidplan_pb2 as pb
        from vidplan_client.wire import vidplan_pb2_grpc as pb_grpc

        self.pb, self.grpc = pb, grpc
        opts = [("grpc.max_send_message_length", 64 * 2**20), ("grpc.max_receive_message_length", 64 * 2**20)]
        self.channel = grpc.insecure_channel(f"127.0.0.1:{ports['grpc']}", options=opts)
        self.stub = pb_grpc.VidPlanStub(self.channel)
        self.http_url = f"http://127.0.0.1:{ports['http']}"
        self.httpx = httpx

    def plan(self, request, timeout: float = 120.0) -> tuple[str, float, object]:
        """(status name, seconds, reply or error details)."""
        t = time.perf_counter()
        try:
            reply = self.stub.Plan(request, timeout=timeout)
            return "OK", time.perf_counter() - t, reply
        except self.grpc.RpcError as e:
            return e.code().name, time.perf_counter() - t, e.details()

    def http_plan(self, body: dict, timeout: float = 120.0) -> tuple[str, float, str]:
        """(status, seconds, error message or ""); the body is encoded and the connection opened before timing."""
        content = json.dumps(body).encode()
        with self.httpx.Client(base_url=self.http_url, timeout=timeout) as http:
            http.get("/livez")
            t = time.perf_counter()
            try:
                r = http.post("/v1/plan", content=content, headers={"content-type": "application/json"})
            except self.httpx.TimeoutException:
                return "client gave up", time.perf_counter() - t, ""
            seconds = time.perf_counter() - t
            message = r.json().get("error", {}).get("message", "") if r.status_code != 200 else ""
            return str(r.status_code), seconds, message

    def block(self, seconds: float):
        """Start a plan that holds the planner ``seconds`` s; returns its future. Waits until it runs."""
        future = self.stub.Plan.future(pb_request(self.pb, instruction=f"block:{seconds}"), timeout=120)
        time.sleep(0.3)
        return future


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(client: Client, pid: int, count_file: Path) -> dict:
    pb = client.pb
    out: dict = {}
    plans = lambda: int(count_file.read_text() or 0)  # noqa: E731

    # warm the path (first JPEG decode, text embedding) with two cheap plans
    for _ in range(2):
        code, _, _ = client.plan(pb_request(pb))
        assert code == "OK", code

    # -- amplified requests
    big = (_png(4096, 4096), 4096, 4096)
    hd = (_png(720, 1280), 720, 1280)
    for name, image, history in (("amplified_4096", big, 64), ("amplified_720p", hd, 64)):
        request = pb_request(pb, t=20.0 if name == "amplified_4096" else 30.0, image=image, history=history)
        with ThreadPoolExecutor(2) as pool:
            amplified = pool.submit(client.plan, request)
            time.sleep(0.2)
            cheap = pool.submit(client.plan, pb_request(pb, t=40.0))
            code, seconds, detail = amplified.result()
            cheap_code, cheap_s, _ = cheap.result()
        out[name] = {
            "request_mb": round(request.ByteSize() / 2**20, 2),
            "code": code,
            "seconds": round(seconds, 3),
            "detail": detail if isinstance(detail, str) else "",
            "cheap_plan_behind_it": {"code": cheap_code, "seconds": round(cheap_s, 3)},
        }
    code, seconds, reply = client.plan(pb_request(pb, t=50.0, image=hd, history=6))
    out["history_6_720p"] = {
        "code": code,
        "seconds": round(seconds, 3),
        "decode_ms": round(reply.timings_ms["decode"], 1) if code == "OK" else None,
    }

    # -- deadlines in the queue
    blocker = client.block(2.0)
    with ThreadPoolExecutor(2) as pool:
        over_grpc = pool.submit(client.plan, pb_request(pb, deadline_ms=100))
        over_http = pool.submit(client.http_plan, json_request(deadline_ms=100))
        code, seconds, detail = over_grpc.result()
        http_code, http_s, http_detail = over_http.result()
    blocker.result()
    out["deadline_100ms"] = {
        "grpc": {"code": code, "seconds": round(seconds, 3), "detail": detail},
        "http": {"status": http_code, "seconds": round(http_s, 3), "detail": http_detail},
    }
    blocker = client.block(4.0)
    code, seconds, detail = client.plan(pb_request(pb, deadline_ms=2000))
    blocker.result()
    out["deadline_2s_behind_4s"] = {"code": code, "seconds": round(seconds, 3), "detail": detail}
    blocker = client.block(3.0)
    with ThreadPoolExecutor(7) as pool:
        results = list(pool.map(lambda _: client.http_plan(json_request(deadline_ms=150)), range(7)))
    blocker.result()
    latencies = [s for _, s, _ in results]
    out["http_150ms_under_load"] = {
        "statuses": sorted({c for c, _, _ in results}),
        "p50_s": round(float(np.percentile(latencies, 50)), 3),
        "p95_s": round(float(np.percentile(latencies, 95)), 3),
    }

    # -- calls whose client gave up while queued
    blocker = client.block(2.0)
    before = plans()
    with ThreadPoolExecutor(6) as pool:
        gave_up = [pool.submit(client.plan, pb_request(pb), 0.3) for _ in range(3)]
        gave_up += [pool.submit(client.http_plan, json_request(), 0.3) for _ in range(3)]
        codes = [f.result()[0] for f in gave_up]
    blocker.result()
    time.sleep(1.0)
    while client.plan(pb_request(pb, t=60.0))[0] == "RESOURCE_EXHAUSTED":
        time.sleep(0.5)
    out["gave_up"] = {"client_saw": sorted(set(codes)), "calls": 6, "planned_anyway": plans() - before - 1}

    # -- refused requests with large session ids, two rounds of 100: what is kept grows with every round, what the
    # allocator merely holds on to (freed memory it does not hand back to the system) does not
    time.sleep(0.5)
    rss = [rss_mb(pid)]
    codes = set()
    for round_ in range(2):
        for i in range(100):
            session = f"{round_}{i:03d}" + "s" * (3 * 2**20)
            codes.add(client.plan(pb_request(pb, t=70.0, session=session, num_proposals=1000), timeout=30)[0])
        time.sleep(0.5)
        rss.append(rss_mb(pid))
    alive = client.plan(pb_request(pb, t=80.0))[0]
    out["session_ids"] = {
        "codes": sorted(codes),
        "rss_mb": [round(r, 1) for r in rss],
        "rss_growth_mb": round(rss[1] - rss[0], 1),
        "rss_growth_second_100_mb": round(rss[2] - rss[1], 1),
        "next_good_request": alive,
    }

    # -- malformed protobuf
    raw = client.channel.unary_unary("/vidplan.v1.VidPlan/Plan")
    try:
        raw(b"\x0a\xff\xff\xff\xff\x0f", timeout=5)
        out["malformed"] = {"code": "OK"}
    except client.grpc.RpcError as e:
        out["malformed"] = {"code": e.code().name, "detail": e.details()}
    return out


def table(label: str, r: dict) -> str:
    rows = [
        (
            "64 history x 3 uniform 4096x4096 PNG (11 MB): answer",
            r["amplified_4096"]["code"],
            f"{r['amplified_4096']['seconds']:.2f} s",
        ),
        (
            "  a cheap plan sent 0.2 s after it",
            r["amplified_4096"]["cheap_plan_behind_it"]["code"],
            f"{r['amplified_4096']['cheap_plan_behind_it']['seconds']:.2f} s",
        ),
        (
            "64 history x 3 uniform 1280x720 PNG: answer",
            r["amplified_720p"]["code"],
            f"{r['amplified_720p']['seconds']:.2f} s",
        ),
        (
            "6 history x 3 1280x720 PNG: server decode",
            r["history_6_720p"]["code"],
            f"{r['history_6_720p']['decode_ms']} ms",
        ),
        (
            "100 ms deadline behind a 2 s plan, gRPC",
            r["deadline_100ms"]["grpc"]["code"],
            f"{r['deadline_100ms']['grpc']['seconds']:.3f} s",
        ),
        (
            "100 ms deadline behind a 2 s plan, HTTP",
            r["deadline_100ms"]["http"]["status"],
            f"{r['deadline_100ms']['http']['seconds']:.3f} s",
        ),
        (
            "2 s deadline behind a 4 s plan, gRPC",
            r["deadline_2s_behind_4s"]["code"],
            f"{r['deadline_2s_behind_4s']['seconds']:.3f} s",
        ),
        (
            "7 HTTP plans, 150 ms deadlines, behind a 3 s plan: p95",
            "/".join(r["http_150ms_under_load"]["statuses"]),
            f"{r['http_150ms_under_load']['p95_s']:.3f} s",
        ),
        ("6 calls whose client gave up in the queue: planned anyway", "", str(r["gave_up"]["planned_anyway"])),
        (
            "RSS growth, 100 refused requests with 3 MB session ids",
            "/".join(r["session_ids"]["codes"]),
            f"{r['session_ids']['rss_growth_mb']:.0f} MB",
        ),
        ("  and over the next 100", "", f"{r['session_ids']['rss_growth_second_100_mb']:.0f} MB"),
        ("corrupt protobuf bytes", r["malformed"]["code"], ""),
    ]
    width = max(len(a) for a, _, _ in rows)
    lines = [f"{label}", f"{'case'.ljust(width)}  {'status':<22} value"]
    lines += [f"{a.ljust(width)}  {b:<22} {c}" for a, b, c in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("outputs/bench/serving_hostile.json"))
    p.add_argument("--label", default="current", help="name of this run in the JSON (e.g. before, after)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--count-file", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.ready_file, args.count_file)
        return

    tmp = Path(tempfile.mkdtemp(prefix="vidplan-hostile-"))
    ready, count = tmp / "ready.json", tmp / "count"
    count.write_text("0")
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", "--ready-file", str(ready), "--count-file", str(count)],
        env=os.environ.copy(),
    )
    try:
        end = time.monotonic() + 180
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > end:
                raise SystemExit("the server did not start")
            time.sleep(0.2)
        time.sleep(0.2)
        ports = json.loads(ready.read_text())
        import vidplan_server

        results = measure(Client(ports), ports["pid"], count)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    report = {
        "label": args.label,
        "vidplan_server_path": str(Path(vidplan_server.__file__).parent),
        "host": f"{platform.machine()} {os.cpu_count()} threads",
        "results": results,
    }
    print(table(args.label, results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(args.out.read_text()) if args.out.exists() else {}
    existing[args.label] = report
    args.out.write_text(json.dumps(existing, indent=2))
    print(f"wrote {args.out} [{args.label}]")


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
