"""Protobuf messages (``proto/vidplan/v1/vidplan.proto``) to and from the service's dataclasses.

Pure conversion: no checks beyond what the wire format itself cannot express (a camera listed twice,
an unset required message, an unspecified enum); everything else is validated by the service.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from vidplan_client.wire import vidplan_pb2 as pb

from vidplan_server import __version__
from vidplan_server.planning.types import ModelInfo
from vidplan_server.planning.validation import OPTIONAL_COUNTS
from vidplan_server.serving.errors import DeadlineExceeded, InvalidArgument, ServingError
from vidplan_server.serving.images import encode_rollout
from vidplan_server.serving.messages import (
    Image,
    Observation,
    Options,
    PlanCall,
    PlanReply,
    State,
    earliest_deadline,
    frames_by_camera,
)

ENCODING_NAMES = {pb.IMAGE_ENCODING_JPEG: "jpeg", pb.IMAGE_ENCODING_PNG: "png", pb.IMAGE_ENCODING_RAW_RGB: "raw"}
ENCODING_ENUMS = {name: enum for enum, name in ENCODING_NAMES.items()}
SPACE_NAMES = {
    pb.ACTION_SPACE_CARTESIAN_POSITION: "cartesian_position",
    pb.ACTION_SPACE_JOINT_VELOCITY: "joint_velocity",
}
SPACE_ENUMS = {name: enum for enum, name in SPACE_NAMES.items()}
MODE_NAMES = {pb.PLAN_MODE_UNSPECIFIED: "plan", pb.PLAN_MODE_PLAN: "plan", pb.PLAN_MODE_POLICY: "policy"}
MODE_ENUMS = {"plan": pb.PLAN_MODE_PLAN, "policy": pb.PLAN_MODE_POLICY}
#: PlanOptions.uq_method (UQ_METHOD_UNSPECIFIED: the server's default, None here) <-> planning.types.UQ_METHODS.
UQ_NAMES = {
    pb.UQ_METHOD_BINS: "bins",
    pb.UQ_METHOD_C3_FSC: "c3-fsc",
    pb.UQ_METHOD_C3_CS: "c3-cs",
    pb.UQ_METHOD_SQUBED: "squbed",
}
UQ_ENUMS = {name: enum for enum, name in UQ_NAMES.items()}


def plan_call(request: pb.PlanRequest, transport_deadline_s: float | None = None) -> PlanCall:
    """A :class:`PlanCall` from a wire request; ``transport_deadline_s`` is the gRPC deadline left (s)."""
    if not request.HasField("observation"):
        raise InvalidArgument("missing", field="observation")
    if transport_deadline_s is not None and transport_deadline_s <= 0:
        raise DeadlineExceeded("the call's deadline passed before it reached the planner", field="deadline")
    o = request.options
    if o.mode not in MODE_NAMES:
        raise InvalidArgument(f"{o.mode} is not a valid PlanMode", field="options.mode")  # open enum: any number
    if o.uq_method != pb.UQ_METHOD_UNSPECIFIED and o.uq_method not in UQ_NAMES:
        raise InvalidArgument(f"{o.uq_method} is not a valid UqMethod", field="options.uq_method")
    options = Options(
        **{name: getattr(o, name) if o.HasField(name) else None for name in OPTIONAL_COUNTS},
        seed=o.seed,
        return_heatmaps=o.return_heatmaps,
        mode=MODE_NAMES[o.mode],
        uq_method=UQ_NAMES.get(o.uq_method),  # unspecified: None, the server's default
    )
    nominal, nominal_space = None, "cartesian_position"
    if request.HasField("nominal") and request.nominal.rows:
        if request.nominal.space not in SPACE_NAMES:
            space = request.nominal.space  # proto3 enums are open: a number without a name arrives as it is
            name = pb.ActionSpace.Name(space) if space in pb.ActionSpace.values() else str(space)
            raise InvalidArgument(f"{name} is not a valid action space", field="nominal.space")
        nominal_space = SPACE_NAMES[request.nominal.space]
        nominal = [list(row.values) for row in request.nominal.rows]
    reference = [list(row.values) for row in request.reference] or None
    option_deadline_s = o.deadline_ms / 1000.0 if o.HasField("deadline_ms") else None
    return PlanCall(
        instruction=request.instruction,
        observation=observation(request.observation, "observation"),
        session_id=request.session_id,
        sequence=request.sequence,
        history=[observation(past, f"history[{i}]", with_state=False) for i, past in enumerate(request.history)],
        nominal=nominal,
        nominal_space=nominal_space,
        reference=reference,
        options=options,
        deadline_s=earliest_deadline(transport_deadline_s, option_deadline_s),
    )


def observation(msg: pb.Observation, field: str, with_state: bool = True) -> Observation:
    frames = frames_by_camera(
        (
            (
                f.camera,
                Image(
                    data=f.data, encoding=ENCODING_NAMES.get(f.encoding, "unspecified"), height=f.height, width=f.width
                ),
            )
            for f in msg.frames
        ),
        f"{field}.frames",
    )
    state = None
    if with_state and msg.HasField("state"):
        s = msg.state
        state = State(
            joint_position=list(s.joint_position),
            cartesian_position=list(s.cartesian_position),
            gripper_position=s.gripper_position,
        )
    return Observation(frames=frames, timestamp_s=msg.timestamp_s, state=state)


def _rows(array: np.ndarray) -> list[pb.ActionRow]:
    return [pb.ActionRow(values=row.tolist()) for row in np.asarray(array, dtype=np.float64)]


def _images(stack: np.ndarray | None, cameras: list[str]) -> list[pb.PredictedImage]:
    return [
        pb.PredictedImage(
            frame=t,
            image=pb.CameraFrame(
                camera=camera, encoding=pb.IMAGE_ENCODING_PNG, width=img.width, height=img.height, data=img.data
            ),
        )
        for t, camera, img in encode_rollout(stack, cameras)
    ]


def plan_response(reply: PlanReply, cameras: list[str]) -> pb.PlanResponse:
    r = reply.result
    fields = reply.plain_fields()
    return pb.PlanResponse(
        stamp=pb.ChunkStamp(t0_s=reply.t0_s, i0=reply.i0, dt_s=reply.dt_s),
        **{**fields, "chunk": _rows(r.actions), "joint_positions": _rows(r.joint_positions)},
        proposal_scores=np.asarray(r.proposal_scores, dtype=np.float64).tolist(),
        refinement=[
            pb.RefineStep(iteration=s.iteration, objective=s.objective, value=s.value, uncertainty=s.uncertainty)
            for s in r.refinement
        ],
        predicted_frames=_images(r.predicted_frames, cameras),
        heatmaps=_images(r.heatmaps, cameras),
        dropped_sequences=list(reply.dropped_sequences),
    )


def error_response(sequence: int, session_id: str, error: ServingError) -> pb.PlanResponse:
    """A StreamPlan reply that carries an error instead of a chunk."""
    violations = list(getattr(error, "violations", []))
    return pb.PlanResponse(
        session_id=session_id,
        sequence=sequence,
        error=pb.PlanError(code=error.code, message=str(error), violations=violations),
    )


def info_response(model: ModelInfo, modes: Sequence[str], serving: Mapping[str, Any]) -> pb.InfoResponse:
    """GetInfo's reply: what the model offers (its uncertainty methods included), the modes this server offers and
    its serving limits (:meth:`PlanService.serving_info`)."""
    limits = model.limits
    return pb.InfoResponse(
        model_version=model.model_version,
        cameras=list(model.cameras),
        image_height=int(model.image_size[0]),
        image_width=int(model.image_size[1]),
        history=model.history,
        horizon=model.horizon,
        frame_stride=model.frame_stride,
        dt_s=model.dt_s,
        action_space=SPACE_ENUMS.get(model.action_space, pb.ACTION_SPACE_UNSPECIFIED),
        chunk_steps=model.chunk_steps,
        limits=pb.SafetyLimits(
            workspace_min_m=list(limits.workspace_min_m),
            workspace_max_m=list(limits.workspace_max_m),
            max_translation_per_step_m=limits.max_translation_per_step_m,
            max_rotation_per_step_rad=limits.max_rotation_per_step_rad,
            joint_lower_rad=list(limits.joint_lower_rad),
            joint_upper_rad=list(limits.joint_upper_rad),
            gripper_min=float(limits.gripper_range[0]),
            gripper_max=float(limits.gripper_range[1]),
        ),
        server_version=__version__,
        request_limits=pb.RequestLimits(
            **{k: v for k, v in serving.items() if k in pb.RequestLimits.DESCRIPTOR.fields_by_name and v is not None}
        ),
        modes=[MODE_ENUMS[mode] for mode in modes if mode in MODE_ENUMS],
        uq_methods=[UQ_ENUMS[method] for method in model.uq_methods if method in UQ_ENUMS],
        default_uq_method=UQ_ENUMS.get(model.default_uq_method, pb.UQ_METHOD_UNSPECIFIED),
    )
