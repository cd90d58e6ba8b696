"""JSON bodies of the HTTP API (pydantic v2), mirroring the protobuf messages field for field.

Differences from the protobuf JSON mapping, chosen for hand-written clients: enums are short lower-case
names (``"jpeg"``, ``"cartesian_position"``), image bytes are standard base64 strings. Floats reject NaN
and infinity (``allow_inf_nan=False``) and unknown fields are refused, so typos do not pass silently.

Only types are checked here. Ranges and sizes are checked by the service from its one table
(:mod:`~vidplan_server.serving.validation`), so a bad value gets the same message over HTTP as over gRPC;
:func:`~vidplan_server.serving.http_app.create_app` writes the same ranges into the OpenAPI schema.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


class CameraFrame(BaseModel):
    model_config = _STRICT

    camera: str = Field(description="one of the cameras GET /v1/info lists (DROID names)")
    encoding: Literal["jpeg", "png", "raw"] = Field(description="raw: height * width * 3 bytes, RGB, row-major")
    width: int = Field(0, description="pixels; required for raw, else 0 or the image's own width")
    height: int = Field(0, description="pixels; required for raw, else 0 or the image's own height")
    data: str = Field(
        description="the encoded image, standard base64; at most the server's image size "
        "(GET /v1/info: serving.max_image_long_side x max_image_short_side, either orientation)"
    )


class RobotState(BaseModel):
    model_config = _STRICT

    joint_position: list[float] = Field(description="7 values, rad; the Panda's limits widened by 0.1 rad")
    cartesian_position: list[float] = Field(description="x, y, z m; roll, pitch, yaw rad (extrinsic XYZ)")
    gripper_position: float = Field(description="[0, 1], 1 = closed")


class Observation(BaseModel):
    model_config = _STRICT

    timestamp_s: float = Field(description="robot clock (s) when the frames were taken")
    frames: list[CameraFrame] = Field(description="one per camera the server lists in /v1/info")
    state: RobotState | None = Field(None, description="required for the current observation")


class NominalChunk(BaseModel):
    model_config = _STRICT

    space: Literal["cartesian_position", "joint_velocity"]
    rows: list[list[float]] = Field(
        description="(S, 7) pose + gripper, or (S, 8) DROID joint_velocity (7, "
        "normalised to [-1, 1]; 1 = 0.2 rad per 15 Hz step) + gripper"
    )


class PlanOptions(BaseModel):
    model_config = _STRICT

    num_proposals: int | None = Field(None, description="candidate chunks rolled out in one batch")
    refine_iters: int | None = Field(None, description="gradient steps on the winner; 0 = selection only")
    flow_steps: int | None = Field(None, description="network evaluations per rollout")
    deadline_ms: int | None = Field(
        None,
        description="wall-clock budget from arrival, ms, decoding and queueing "
        "included; shorter than serving.min_deadline_ms (GET /v1/info) is 504 at once",
    )
    seed: int = Field(0, description="uint64, as on the wire")
    return_heatmaps: bool = False
    nominal_perturbations: int | None = Field(None, description="perturbations of the nominal chunk")
    policy_samples: int | None = Field(
        None,
        description="chunks sampled from the bundle's policy as proposals when "
        "no nominal is sent (0 = none); unset = the server's --policy-samples",
    )
    policy_perturbations: int | None = Field(
        None,
        description="perturbed copies of the policy samples, within "
        "num_proposals; unset = the server's --policy-perturbations",
    )
    mode: Literal["plan", "policy"] = Field(
        "plan",
        description="plan: VidPlan; policy: the bundle's policy alone "
        "(the baseline): one seeded chunk, feasible and safety-checked, no world "
        "model, per-frame fields empty and confidence 0; only when GET /v1/info "
        "lists it in `modes`, else 400 naming options.mode",
    )
    uq_method: Literal["bins", "c3-fsc", "c3-cs", "squbed"] | None = Field(
        None,
        description="the uncertainty that weights the selection score and the reported uncertainty, confidence and "
        "heatmaps: bins (the 30-bin head), c3-fsc / c3-cs (C3's probes), squbed (S-QUBED; slow); unset = the "
        "server's default (GET /v1/info: default_uq_method); only one GET /v1/info lists in `uq_methods`, else 400 "
        "naming options.uq_method",
    )


class PlanRequest(BaseModel):
    model_config = _STRICT

    session_id: str = Field("", description="one robot episode; the server keeps its frame history; printable ASCII")
    sequence: int = Field(0, description="strictly increasing per session; echoed")
    instruction: str = Field(description="language task, e.g. 'put the red cube in the tray'; not blank")
    observation: Observation
    history: list[Observation] = Field(
        default_factory=list,
        description="earlier observations, oldest first; replaces the session history; "
        "at most serving.max_history (GET /v1/info), of which only those the model sees are decoded",
    )
    nominal: NominalChunk | None = None
    options: PlanOptions = Field(default_factory=PlanOptions)
    reference: list[list[float]] = Field(
        default_factory=list,
        description="(R, 7) pose + gripper: the rows of the chunk the robot is executing that it has not executed "
        "yet; the policy's samples continue it (policy mode answers the coherent draw, a plan keeps it as the "
        "incumbent). Empty = none",
    )


class ChunkStamp(BaseModel):
    t0_s: float = Field(description="timestamp of the observation this plan answers")
    i0: int = Field(description="row k is the target for robot time t0_s + (i0 + k) * dt_s")
    dt_s: float


class RefineStep(BaseModel):
    iteration: int
    objective: float
    value: float
    uncertainty: float


class PredictedImage(BaseModel):
    frame: int
    image: CameraFrame


class PlanResponse(BaseModel):
    session_id: str
    sequence: int
    stamp: ChunkStamp
    chunk: list[list[float]] = Field(description="(S, 7) absolute TCP pose (6) + gripper per control step")
    joint_positions: list[list[float]] = Field(description="(S, 7) rad, IK of chunk")
    frame_stride: int
    uncertainty: list[float]
    expected_error: list[float]
    semantic_reward: list[float]
    value: list[float]
    confidence: float
    proposal_scores: list[float | None] = Field(
        description="(N,) selection score of every proposal (null only if a score is not finite)"
    )
    proposal_kinds: list[str]
    winner: int
    refinement: list[RefineStep]
    refined: bool
    deadline_hit: bool
    notes: list[str]
    predicted_frames: list[PredictedImage] = Field(default_factory=list)
    heatmaps: list[PredictedImage] = Field(default_factory=list)
    model_version: str
    timings_ms: dict[str, float]


class ErrorBody(BaseModel):
    code: str = Field(description="gRPC status name, e.g. INVALID_ARGUMENT")
    message: str = Field(description="names the offending field")
    field: str | None = None
    violations: list[str] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    error: ErrorBody


class Liveness(BaseModel):
    live: bool


class Readiness(BaseModel):
    ready: bool
    reasons: list[str] = Field(description="why not ready: model not warmed up, shutting down, queue saturated")
    queue_depth: int
    max_queue: int
