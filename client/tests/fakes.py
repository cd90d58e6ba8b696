"""Test doubles: a canned in-process VidPlan gRPC server, a fake DROID env, a fake clock, a fake plan client.

Two kinds of chunk: :func:`chunk_for` labels its rows (x = sequence, y = row) for the wire tests; the robot loop,
which checks every step against the step limits, gets physical ones (:func:`moving_response`: from the request's
observed pose, a few mm per row) and says which sequence and row it ran in ``loop.records``.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from vidplan_client.wire import vidplan_pb2 as pb
from vidplan_client.wire import vidplan_pb2_grpc as pb_grpc

DT_S = 1.0 / 15.0


def chunk_for(sequence: int, steps: int = 15) -> np.ndarray:
    """(steps, 7) a chunk whose rows say which sequence and row they are: x = sequence, y = row."""
    rows = np.zeros((steps, 7))
    rows[:, 0] = sequence
    rows[:, 1] = np.arange(steps)
    rows[:, 2] = 0.3
    rows[:, 6] = 0.5
    return rows


def canned_response(request: pb.PlanRequest, sequence: int | None = None, steps: int = 15) -> pb.PlanResponse:
    """A response answering ``request`` (or claiming to answer ``sequence``), stamped at its observation."""
    seq = request.sequence if sequence is None else sequence
    response = pb.PlanResponse(
        session_id=request.session_id,
        sequence=seq,
        frame_stride=3,
        confidence=0.75,
        stamp=pb.ChunkStamp(t0_s=request.observation.timestamp_s, i0=1, dt_s=DT_S),
        uncertainty=[0.1] * 5,
        value=[0.5] * 5,
        model_version="canned",
        timings_ms={"total": 12.5},
    )
    response.chunk.extend(pb.ActionRow(values=row.tolist()) for row in chunk_for(seq, steps))
    return response


def moving_response(
    request: pb.PlanRequest,
    step=(0.003, 0.0, 0.0, 0.0, 0.0, 0.0),
    offset=(0.0,) * 6,
    gripper: float = 1.0,
    sequence: int | None = None,
    steps: int = 15,
) -> pb.PlanResponse:
    """A physical answer to ``request``: row k = observed pose + ``offset`` + (k + 1) * ``step`` (x, y, z m, roll,
    pitch, yaw rad), gripper ``gripper``; stamped at the request's observation like :func:`canned_response`."""
    start = np.asarray(request.observation.state.cartesian_position, dtype=np.float64) + np.asarray(offset)
    rows = np.zeros((steps, 7))
    rows[:, :6] = start + np.arange(1, steps + 1)[:, None] * np.asarray(step, dtype=np.float64)
    rows[:, 6] = gripper
    response = canned_response(request, sequence, steps)
    del response.chunk[:]
    response.chunk.extend(pb.ActionRow(values=row.tolist()) for row in rows)
    return response


class CannedVidPlan(pb_grpc.VidPlanServicer):
    """VidPlan servicer with canned answers; records calls; aborts with queued status codes first."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.calls: list[pb.PlanRequest] = []
        self.metadata: list[dict[str, str]] = []
        self.fail_with: list[grpc.StatusCode] = []
        self.delay_s = 0.0
        self._lock = threading.Lock()

    def Plan(self, request, context):
        with self._lock:
            self.calls.append(request)
            self.metadata.append(dict(context.invocation_metadata()))
            code = self.fail_with.pop(0) if self.fail_with else None
        if self.delay_s:
            time.sleep(self.delay_s)
        if code is not None:
            context.abort(code, f"canned {code.name}")
        response = canned_response(request)
        if request.options.return_heatmaps:  # one flat grey 2x4 heatmap of frame 2
            image = pb.CameraFrame(
                camera="wrist_image_left",
                encoding=pb.IMAGE_ENCODING_RAW_RGB,
                width=4,
                height=2,
                data=np.full((2, 4, 3), 200, np.uint8).tobytes(),
            )
            response.heatmaps.add(frame=2, image=image)
        return response

    def StreamPlan(self, request_iterator, context):
        for request in request_iterator:
            self.calls.append(request)
            yield canned_response(request)

    def GetInfo(self, request, context):
        self.metadata.append(dict(context.invocation_metadata()))
        return pb.InfoResponse(
            model_version="canned",
            cameras=["exterior_image_1_left", "exterior_image_2_left", "wrist_image_left"],
            image_height=64,
            image_width=64,
            history=2,
            horizon=5,
            frame_stride=3,
            dt_s=DT_S,
            action_space=pb.ACTION_SPACE_CARTESIAN_POSITION,
            chunk_steps=15,
            limits=pb.SafetyLimits(workspace_min_m=[0.1, -0.4, -0.05], workspace_max_m=[1.0, 0.4, 1.0]),
        )


def start_server(servicer: CannedVidPlan) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_VidPlanServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("vidplan.v1.VidPlan", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code.name)
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        assert seconds > 0, "the loop must never sleep a negative or zero time"
        self.slept.append(seconds)
        self.t += seconds


class FakeEnv:
    """DROID RobotEnv look-alike whose pose drifts 1 mm (and 1 mrad) with every observation, so a hold at the observed
    pose is recognisable; with ``follow``, the observed pose is the last commanded one instead (perfect tracking).
    The measured gripper is always ``gripper``."""

    START = (0.5, 0.0, 0.3, np.pi, 0.0, 0.0)

    def __init__(self, height: int = 24, width: int = 32, follow: bool = False, gripper: float = 0.25) -> None:
        rng = np.random.default_rng(0)
        self.images = {
            name: rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
            for name in ("exterior_image_1_left", "exterior_image_2_left", "wrist_image_left")
        }
        self.follow, self.gripper = follow, gripper
        self.observations = 0
        self.commands: list[tuple[np.ndarray, str, bool]] = []
        self.poses: list[np.ndarray] = []

    def get_observation(self) -> dict:
        self.observations += 1
        if self.follow:
            pose = self.commands[-1][0][:6].copy() if self.commands else np.array(self.START)
        else:
            pose = np.array(self.START) + 0.001 * self.observations
        self.poses.append(pose)
        return {
            "image": dict(self.images),
            "robot_state": {
                "joint_positions": [0.0, -0.5, 0.0, -2.0, 0.0, 1.5, 0.8],
                "cartesian_position": pose.tolist(),
                "gripper_position": self.gripper,
            },
            "timestamp": {"ignored": True},
        }

    def update_robot(self, action, action_space="cartesian_position", blocking=False):
        self.commands.append((np.asarray(action, dtype=float).copy(), action_space, blocking))


class FakePlanClient:
    """Plan client whose answer to each call is scripted: ``script(request, clock) -> response`` or raises."""

    def __init__(self, script=None) -> None:
        self.requests: list[pb.PlanRequest] = []
        self.timeouts: list[float | None] = []
        self.answers: dict[int, np.ndarray] = {}  # request sequence -> (S, 7) chunk of the answer returned
        self.script = script or (lambda request: moving_response(request))

    def plan(self, request: pb.PlanRequest, timeout_s: float | None = None) -> pb.PlanResponse:
        self.requests.append(request)
        self.timeouts.append(timeout_s)
        response = self.script(request)
        self.answers[request.sequence] = np.array([row.values for row in response.chunk]).reshape(-1, 7)
        return response
