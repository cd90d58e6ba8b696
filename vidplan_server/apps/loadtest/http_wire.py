"""The HTTP API's JSON (``POST /v1/plan``, ``GET /v1/info``) from and to the client's protobuf messages.

The load test builds every request once, with the client's builders, as a ``pb.PlanRequest``; over HTTP it is
sent as the JSON body the server's pydantic models read (:mod:`vidplan_server.serving.http_models`: enums as short
lower-case names, image bytes as standard base64, unset options left out), and the JSON reply is read back into a
``pb.PlanResponse`` (the fields a robot uses: stamp, chunk, joint targets, flags, timings), so both transports feed
the same robot and statistics code.
"""

from __future__ import annotations

import base64
from typing import Any

from vidplan_client.convert import ACTION_SPACES, ENCODINGS, MODES
from vidplan_client.wire import vidplan_pb2 as pb

_ENCODING_NAMES = {v: k for k, v in ENCODINGS.items()}
_SPACE_NAMES = {v: k for k, v in ACTION_SPACES.items()}
_MODE_NAMES = {v: k for k, v in MODES.items()}
_OPTIONAL_COUNTS = (
    "num_proposals",
    "refine_iters",
    "flow_steps",
    "deadline_ms",
    "nominal_perturbations",
    "policy_samples",
    "policy_perturbations",
)


def _observation(obs: pb.Observation, with_state: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "timestamp_s": obs.timestamp_s,
        "frames": [
            {
                "camera": f.camera,
                "encoding": _ENCODING_NAMES[f.encoding],
                "width": f.width,
                "height": f.height,
                "data": base64.b64encode(f.data).decode("ascii"),
            }
            for f in obs.frames
        ],
    }
    if with_state and obs.HasField("state"):
        s = obs.state
        out["state"] = {
            "joint_position": list(s.joint_position),
            "cartesian_position": list(s.cartesian_position),
            "gripper_position": s.gripper_position,
        }
    return out


def request_json(request: pb.PlanRequest) -> dict[str, Any]:
    """``pb.PlanRequest`` -> the JSON body of ``POST /v1/plan``."""
    body: dict[str, Any] = {
        "session_id": request.session_id,
        "sequence": request.sequence,
        "instruction": request.instruction,
        "observation": _observation(request.observation, with_state=True),
        "history": [_observation(h, with_state=False) for h in request.history],
    }
    if request.HasField("nominal"):
        body["nominal"] = {
            "space": _SPACE_NAMES[request.nominal.space],
            "rows": [list(r.values) for r in request.nominal.rows],
        }
    if request.HasField("options"):
        o = request.options
        options: dict[str, Any] = {
            "seed": o.seed,
            "return_heatmaps": o.return_heatmaps,
            "mode": _MODE_NAMES.get(o.mode, "plan"),
        }
        options.update({name: getattr(o, name) for name in _OPTIONAL_COUNTS if o.HasField(name)})
        body["options"] = options
    return body


def response_from_json(body: dict[str, Any]) -> pb.PlanResponse:
    """A ``POST /v1/plan`` reply (200) -> ``pb.PlanResponse``; raises KeyError or TypeError when a field is missing."""
    stamp = body["stamp"]
    return pb.PlanResponse(
        session_id=body["session_id"],
        sequence=body["sequence"],
        stamp=pb.ChunkStamp(t0_s=stamp["t0_s"], i0=stamp["i0"], dt_s=stamp["dt_s"]),
        chunk=[pb.ActionRow(values=row) for row in body["chunk"]],
        joint_positions=[pb.ActionRow(values=row) for row in body.get("joint_positions", [])],
        frame_stride=body.get("frame_stride", 0),
        confidence=body.get("confidence", 0.0),
        refined=body.get("refined", False),
        deadline_hit=body.get("deadline_hit", False),
        notes=body.get("notes", []),
        model_version=body.get("model_version", ""),
        timings_ms=body.get("timings_ms", {}),
    )


def info_from_json(body: dict[str, Any]) -> pb.InfoResponse:
    """``GET /v1/info`` -> the ``pb.InfoResponse`` fields a robot's settings follow (``LoopConfig.for_server``)."""
    height, width = body.get("image_size", (0, 0))
    return pb.InfoResponse(
        model_version=body.get("model_version", ""),
        cameras=body.get("cameras", []),
        image_height=height,
        image_width=width,
        history=body["history"],
        horizon=body.get("horizon", 0),
        frame_stride=body["frame_stride"],
        dt_s=body["dt_s"],
        chunk_steps=body.get("chunk_steps", 0),
    )
