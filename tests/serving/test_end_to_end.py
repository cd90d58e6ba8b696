"""The real planner on the bundled default checkpoint, served over real localhost gRPC and HTTP ports.

Requests use small options (6 proposals, no refinement, 1 flow step) to keep CPU time down; one plan
takes roughly 0.2-1 s here, so every test sends only a few.
"""

from __future__ import annotations

import base64
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import grpc
import httpx
import numpy as np
from scipy.spatial.transform import Rotation
from vidplan_client.wire import vidplan_pb2 as pb
from vidplan_client.wire import vidplan_pb2_grpc as pb_grpc

from tests.serving.doubles import POSE_HOME, Q_HOME, json_request, pb_request
from vidplan_server.planning.limits import SafetyLimits, check_chunk
from vidplan_server.robot.panda import PandaKinematics

_KINEMATICS = PandaKinematics()


def assert_safe_chunk(chunk: np.ndarray, joints: np.ndarray, pose0: np.ndarray, limits: dict) -> None:
    """``chunk`` (S, 7) and its IK ``joints`` (S, 7) are finite and inside the planner's safety limits."""
    assert chunk.shape == (15, 7) and joints.shape == (15, 7)
    assert np.isfinite(chunk).all() and np.isfinite(joints).all()
    eps = 1e-6
    assert (chunk[:, :3] >= np.asarray(limits["workspace_min_m"]) - eps).all()
    assert (chunk[:, :3] <= np.asarray(limits["workspace_max_m"]) + eps).all()
    lo, hi = limits["gripper_range"]
    assert ((chunk[:, 6] >= lo - eps) & (chunk[:, 6] <= hi + eps)).all()
    path = np.vstack([pose0[None, :6], chunk[:, :6]])
    steps = np.linalg.norm(np.diff(path[:, :3], axis=0), axis=1)
    assert steps.max() <= limits["max_translation_per_step_m"] + eps
    rotations = Rotation.from_euler("xyz", path[:, 3:6])
    angles = (rotations[:-1].inv() * rotations[1:]).magnitude()
    assert angles.max() <= limits["max_rotation_per_step_rad"] + eps
    assert (joints >= np.asarray(limits["joint_lower_rad"]) - eps).all()
    assert (joints <= np.asarray(limits["joint_upper_rad"]) + eps).all()
    # and the planner's own full check, IK reachability of every step from the returned joints included
    assert check_chunk(chunk, pose0, SafetyLimits(), joints, _KINEMATICS) == []


def _rows(rows) -> np.ndarray:
    return np.array([list(r.values) for r in rows])


def test_grpc_plan_returns_a_safe_chunk(live, planner):
    limits = planner.info().as_dict()["limits"]
    with grpc.insecure_channel(live.grpc_target) as channel:
        vidplan = pb_grpc.VidPlanStub(channel)
        info = vidplan.GetInfo(pb.InfoRequest(), timeout=10)
        assert info.model_version == planner.info().model_version and info.chunk_steps == 15
        assert list(info.limits.workspace_min_m) == limits["workspace_min_m"]
        reply = vidplan.Plan(pb_request(sequence=3, t=100.0, session="grpc-e2e", return_heatmaps=True), timeout=60)
    assert not reply.HasField("error") and reply.sequence == 3 and reply.session_id == "grpc-e2e"
    assert (reply.stamp.t0_s, reply.stamp.i0) == (100.0, 1) and abs(reply.stamp.dt_s - 1 / 15) < 1e-12
    assert_safe_chunk(_rows(reply.chunk), _rows(reply.joint_positions), POSE_HOME, limits)
    assert len(reply.proposal_scores) == 6 and 0.0 <= reply.confidence <= 1.0
    assert reply.timings_ms["total"] >= reply.timings_ms["plan"] > 0
    # Heatmaps: horizon x views PNG images, frame-major, at the model's view size.
    for images in (reply.predicted_frames, reply.heatmaps):
        assert [(p.frame, p.image.camera) for p in images] == [(f, c) for f in range(5) for c in info.cameras]
        png = cv2.imdecode(np.frombuffer(images[0].image.data, np.uint8), cv2.IMREAD_UNCHANGED)
        assert png.shape == (info.image_height, info.image_width, 3) == (images[0].image.height, 64, 3)


def test_http_plan_returns_a_safe_chunk(live, planner):
    limits = planner.info().as_dict()["limits"]
    with httpx.Client(base_url=live.http_url, timeout=60) as http:
        body = json_request(sequence=1, t=5.0, session="http-e2e", encoding="raw", return_heatmaps=True)
        r = http.post("/v1/plan", json=body)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["sequence"] == 1 and body["stamp"] == {"t0_s": 5.0, "i0": 1, "dt_s": 1 / 15}
    assert_safe_chunk(np.array(body["chunk"]), np.array(body["joint_positions"]), POSE_HOME, limits)
    assert body["model_version"] == planner.info().model_version
    heat = body["heatmaps"][14]
    assert len(body["predicted_frames"]) == len(body["heatmaps"]) == 15 and heat["frame"] == 4
    png = cv2.imdecode(np.frombuffer(base64.b64decode(heat["image"]["data"]), np.uint8), cv2.IMREAD_UNCHANGED)
    assert png.shape == (64, 64, 3) and heat["image"]["camera"] == "wrist_image_left"


def test_stream_of_20_observations_plans_on_the_newest(live):
    period_s = 1 / 15

    def observations():
        start = time.monotonic()
        for k in range(1, 21):
            # Paced at the 15 Hz control rate, on the robot clock the server stamps with.
            time.sleep(max(0.0, start + (k - 1) * period_s - time.monotonic()))
            # Planner defaults (12 proposals, refinement): a plan then spans several control periods even on
            # a fast CPU, so stale observations must be dropped.
            yield pb_request(
                sequence=k,
                t=(k - 1) * period_s,
                session="stream-e2e",
                value=10 * k,
                num_proposals=None,
                refine_iters=None,
                flow_steps=None,
            )

    metrics = live.service.metrics.registry
    dropped_before = (
        metrics.get_sample_value(
            "vidplan_requests_total", {"transport": "grpc", "call": "stream", "outcome": "stale_dropped"}
        )
        or 0.0
    )
    with grpc.insecure_channel(live.grpc_target) as channel:
        replies = list(pb_grpc.VidPlanStub(channel).StreamPlan(observations(), timeout=120))
    sequences = [r.sequence for r in replies]
    assert all(not r.HasField("error") for r in replies)
    assert sequences == sorted(set(sequences)) and sequences[-1] == 20
    # A plan takes longer than a control period, so the server skipped observations that went stale.
    assert len(sequences) < 20
    dropped = (
        metrics.get_sample_value(
            "vidplan_requests_total", {"transport": "grpc", "call": "stream", "outcome": "stale_dropped"}
        )
        - dropped_before
    )
    assert dropped == 20 - len(sequences)
    # every observation is either answered or listed as dropped in a later reply, exactly once
    listed = [d for r in replies for d in r.dropped_sequences]
    assert sorted(listed + sequences) == list(range(1, 21))
    for r in replies:
        assert r.stamp.t0_s == (r.sequence - 1) * period_s and len(r.chunk) == 15


def test_concurrent_clients_all_get_their_own_answer(live):
    def grpc_client(k: int):
        with grpc.insecure_channel(live.grpc_target) as channel:
            r = pb_grpc.VidPlanStub(channel).Plan(pb_request(sequence=k, t=float(k), session=f"robot-{k}"), timeout=60)
        return r.session_id, r.sequence, r.stamp.t0_s, len(r.chunk)

    def http_client(k: int):
        r = httpx.post(
            f"{live.http_url}/v1/plan", json=json_request(sequence=k, t=float(k), session=f"robot-{k}"), timeout=60
        )
        assert r.status_code == 200, r.text
        b = r.json()
        return b["session_id"], b["sequence"], b["stamp"]["t0_s"], len(b["chunk"])

    barrier = threading.Barrier(5)

    def start(fn, k):
        barrier.wait(10)
        return fn(k)

    with ThreadPoolExecutor(5) as pool:
        jobs = [pool.submit(start, grpc_client, k) for k in (1, 2, 3)]
        jobs += [pool.submit(start, http_client, k) for k in (4, 5)]
        answers = sorted(j.result(120) for j in jobs)
    assert answers == [(f"robot-{k}", k, float(k), 15) for k in range(1, 6)]


def test_state_outside_the_workspace_is_refused_naming_the_field(live):
    # The robot reports a TCP pose outside the workspace: the planner refuses and names the field.
    with grpc.insecure_channel(live.grpc_target) as channel:
        try:
            pb_grpc.VidPlanStub(channel).Plan(pb_request(pose=[2.0, 0.0, 0.4, np.pi, 0.0, 0.0], q=Q_HOME), timeout=60)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert exc.details().startswith("observation.state.cartesian_position: the robot is outside")
        else:
            raise AssertionError("a pose outside the workspace was planned on")
