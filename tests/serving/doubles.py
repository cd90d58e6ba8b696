"""A stand-in planner with the real one's interface, and request builders shared by the serving tests.

The stand-in answers instantly (or when a gate opens), records every request, and returns a chunk that
holds the current pose, so transport tests can check plumbing, queueing and shutdown without torch work.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from vidplan_server.data.schema import CAMERA_NAMES, DT_S
from vidplan_server.planning.limits import SafetyLimits
from vidplan_server.planning.types import (
    MODES,
    ModelInfo,
    OptionCounts,
    PlanningError,
    PlanOptions,
    PlanRequest,
    PlanResult,
    UnsafePlanError,
)
from vidplan_server.serving.images import encode_image
from vidplan_server.serving.messages import Image, Observation, Options, PlanCall, State

# The simulator's home configuration and its TCP pose (PandaKinematics().fk_pose(Q_HOME), to 1e-6 m).
Q_HOME = np.array([0.0, -0.35, 0.0, -2.3, 0.0, 1.95, np.pi / 4])
POSE_HOME = np.array([0.444403, 0.0, 0.380621, np.pi, 0.0, 0.0])
SIZE = (64, 64)


class StubPlanner:
    """The :class:`~vidplan_server.planning.planner.Planner` interface, without a model.

    ``gate`` (when set) makes ``plan`` wait until it opens; ``warmup_gate`` does the same for ``warmup``.
    ``unsafe`` makes the next plan raise :class:`UnsafePlanError`. ``stages_ms`` (optional) are the stage
    timings it reports, as the real planner does (encode, propose, rollout, score). ``policy``: whether its
    bundle has a policy; without one it offers mode "plan" only and refuses "policy" as the planner does. In mode
    "policy" it answers as the real planner does (one "policy:0" chunk, per-frame fields empty, confidence 0).
    ``options`` records the PlanOptions of every request it got.
    """

    def __init__(self, plan_s: float = 0.0, stages_ms: dict[str, float] | None = None, policy: bool = False) -> None:
        self.plan_s = plan_s
        self.stages_ms = stages_ms
        self.policy = policy
        self.requests: list[PlanRequest] = []
        self.options: list[PlanOptions] = []
        self.references: list = []  # each request's reference rows (None when it sent none)
        self.gate: threading.Event | None = None
        self.warmup_gate: threading.Event | None = None
        self.started = threading.Event()  # set when a plan begins
        self.unsafe = False
        self.threads: set[str] = set()  # names of the threads plan() ran on
        self.active = 0
        self.max_active = 0  # most plan() calls that ever overlapped
        self._lock = threading.Lock()

    def info(self) -> ModelInfo:
        return ModelInfo(
            model_version="stub@0",
            image_size=SIZE,
            history=2,
            horizon=5,
            frame_stride=3,
            defaults=OptionCounts(num_proposals=6, refine_iters=0, flow_steps=1),
            maxima=OptionCounts(num_proposals=64, refine_iters=50, flow_steps=16),
            limits=SafetyLimits(joint_lower_rad=(-2.9,) * 7, joint_upper_rad=(2.9,) * 7),
            modes=MODES if self.policy else ("plan",),
        )

    def warmup(self) -> None:
        if self.warmup_gate is not None:
            self.warmup_gate.wait(10)

    def plan(self, request: PlanRequest) -> PlanResult:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            return self._plan(request)
        finally:
            with self._lock:
                self.active -= 1

    def _plan(self, request: PlanRequest) -> PlanResult:
        self.threads.add(threading.current_thread().name)
        self.requests.append(request)
        self.options.append(request.options)
        self.references.append(request.reference)
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.plan_s:
            time.sleep(self.plan_s)
        if request.instruction == "planner refuses":  # what only the planner checks (its workspace box)
            raise PlanningError("state.cartesian_position: the robot is outside the safety limits (stub)")
        if request.options.mode == "policy" and not self.policy:
            raise PlanningError("options.mode: 'policy' needs a checkpoint with a policy module (stub)")
        if self.unsafe:
            self.unsafe = False
            raise UnsafePlanError(["step 3: z below workspace"])
        pose = np.r_[request.state.cartesian_position, request.state.gripper_position]
        steps = 15
        if request.options.mode == "policy":
            empty = np.zeros(0)
            return PlanResult(
                actions=np.tile(pose, (steps, 1)),
                joint_positions=np.tile(request.state.joint_position, (steps, 1)),
                dt_s=DT_S,
                frame_stride=3,
                uncertainty=empty,
                expected_error=empty,
                semantic_reward=empty,
                value=empty,
                confidence=0.0,
                proposal_scores=np.zeros(1),
                proposal_kinds=["policy:0"],
                winner=0,
                refinement=[],
                refined=False,
                timings_ms={"propose": 0.1, "total": self.plan_s * 1000.0},
                notes=["mode policy: the policy's own chunk, not judged by the world model"],
            )
        return PlanResult(
            actions=np.tile(pose, (steps, 1)),
            joint_positions=np.tile(request.state.joint_position, (steps, 1)),
            dt_s=DT_S,
            frame_stride=3,
            uncertainty=np.zeros(5),
            expected_error=np.zeros(5),
            semantic_reward=np.zeros(5),
            value=np.zeros(5),
            confidence=1.0,
            proposal_scores=np.zeros(1),
            proposal_kinds=["stub"],
            winner=0,
            refinement=[],
            refined=False,
            timings_ms={**(self.stages_ms or {}), "total": self.plan_s * 1000.0},
        )


def frames(value: int = 0, size: tuple[int, int] = (180, 320), encoding: str = "jpeg") -> dict[str, Image]:
    """Three flat-coloured views of brightness ``value`` (survives JPEG and resizing as a marker)."""
    rgb = np.full((*size, 3), value, np.uint8)
    return {cam: encode_image(rgb, encoding) for cam in CAMERA_NAMES}


def call(sequence: int = 1, t: float = 0.0, session: str = "", value: int = 0, **changes) -> PlanCall:
    """A valid PlanCall at robot time ``t``; ``changes`` replace PlanCall fields."""
    obs = Observation(
        frames=frames(value),
        timestamp_s=t,
        state=State(joint_position=Q_HOME.tolist(), cartesian_position=POSE_HOME.tolist(), gripper_position=0.0),
    )
    fields = dict(
        instruction="put the red cube in the tray",
        observation=obs,
        session_id=session,
        sequence=sequence,
        options=Options(num_proposals=6, refine_iters=0, flow_steps=1),
    )
    fields.update(changes)
    return PlanCall(**fields)


def state(**changes) -> State:
    fields = dict(joint_position=Q_HOME.tolist(), cartesian_position=POSE_HOME.tolist(), gripper_position=0.0)
    fields.update(changes)
    return State(**fields)


# ------------------------------------------------------------------------------------------------ wire builders
def pb_request(
    sequence: int = 1,
    t: float = 0.0,
    session: str = "",
    encoding: str = "jpeg",
    size: tuple[int, int] = (180, 320),
    value: int = 0,
    q=None,
    pose=None,
    **options,
):
    """A protobuf PlanRequest with three flat views; ``options`` go into PlanOptions."""
    from vidplan_client.wire import vidplan_pb2 as pb

    from vidplan_server.serving.grpc_convert import ENCODING_ENUMS

    fr = []
    for cam, img in frames(value, size, encoding).items():
        fr.append(
            pb.CameraFrame(
                camera=cam, encoding=ENCODING_ENUMS[encoding], width=img.width, height=img.height, data=img.data
            )
        )
    options = {"num_proposals": 6, "refine_iters": 0, "flow_steps": 1, **options}
    return pb.PlanRequest(
        session_id=session,
        sequence=sequence,
        instruction="put the red cube in the tray",
        observation=pb.Observation(
            timestamp_s=t,
            frames=fr,
            state=pb.RobotState(
                joint_position=list(Q_HOME if q is None else q),
                cartesian_position=list(POSE_HOME if pose is None else pose),
                gripper_position=0.0,
            ),
        ),
        options=pb.PlanOptions(**{k: v for k, v in options.items() if v is not None}),
    )


def json_request(
    sequence: int = 1,
    t: float = 0.0,
    session: str = "",
    encoding: str = "raw",
    size: tuple[int, int] = (180, 320),
    value: int = 0,
    q=None,
    pose=None,
    **options,
) -> dict:
    """The JSON body of ``POST /v1/plan`` (base64 frames)."""
    import base64

    options = {"num_proposals": 6, "refine_iters": 0, "flow_steps": 1, **options}
    return {
        "session_id": session,
        "sequence": sequence,
        "instruction": "put the red cube in the tray",
        "observation": {
            "timestamp_s": t,
            "frames": [
                {
                    "camera": cam,
                    "encoding": encoding,
                    "width": img.width,
                    "height": img.height,
                    "data": base64.b64encode(img.data).decode(),
                }
                for cam, img in frames(value, size, encoding).items()
            ],
            "state": {
                "joint_position": list(map(float, Q_HOME if q is None else q)),
                "cartesian_position": list(map(float, POSE_HOME if pose is None else pose)),
                "gripper_position": 0.0,
            },
        },
        "options": {k: v for k, v in options.items() if v is not None},
    }
