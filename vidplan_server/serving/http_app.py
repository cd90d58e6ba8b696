"""HTTP transport: a FastAPI app over :class:`PlanService`.

``POST /v1/plan`` and ``GET /v1/info`` (bearer token when configured), ``/livez``, ``/readyz``,
``/metrics`` (Prometheus) and the OpenAPI docs at ``/docs``. Routes convert and delegate;
:func:`_error_response` is the one place where service errors become HTTP statuses, with the same
messages the gRPC transport sends.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Iterable

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_fastapi_instrumentator import Instrumentator

from vidplan_server.serving import http_models as m
from vidplan_server.serving.errors import (
    InvalidArgument,
    Overloaded,
    ServingError,
    TooLarge,
    Unauthenticated,
    bearer_token_matches,
)
from vidplan_server.serving.grpc_convert import server_version
from vidplan_server.serving.images import encode_rollout
from vidplan_server.serving.messages import Image, Observation, Options, PlanCall, PlanReply, State, frames_by_camera
from vidplan_server.serving.service import PlanService, outcome_of

_ERRORS = {
    400: {"model": m.ErrorResponse},
    401: {"model": m.ErrorResponse},
    422: {"model": m.ErrorResponse},
    503: {"model": m.ErrorResponse},
    504: {"model": m.ErrorResponse},
}


class BodyLimit:
    """ASGI middleware: refuse a request body over ``max_bytes`` (413) before it is parsed: by its Content-Length
    when given; a chunked body is read here up to the limit (and handed on whole when it fits)."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _error(self, size: str) -> JSONResponse:
        return _error_response(TooLarge(f"{size} is larger than the server's limit of {self.max_bytes} bytes",
                                        field="body"))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > self.max_bytes:
                return await self._error(f"{int(declared)} bytes")(scope, receive, send)
            return await self.app(scope, receive, send)
        chunks, seen, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            more = message.get("more_body", False)
            if seen > self.max_bytes:
                return await self._error(f"a body of more than {seen} bytes")(scope, receive, send)
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def create_app(service: PlanService, token: str | None = None, max_body_bytes: int = 48 * 2**20) -> FastAPI:
    """The HTTP API of ``service``; ``token`` (optional) is the bearer token ``/v1/*`` requires."""
    app = FastAPI(
        title="VidPlan",
        version=server_version(),
        description="Action chunks for a Franka in the DROID setup, planned in a learned video world model.",
    )
    bearer = HTTPBearer(auto_error=False)

    async def authorize(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if not token:
            return
        given = f"{credentials.scheme} {credentials.credentials}" if credentials else ""
        if not bearer_token_matches(given, token):
            service.count("http", "plan", "unauthenticated")
            raise Unauthenticated("missing or wrong bearer token", field="authorization")

    @app.exception_handler(ServingError)
    async def on_serving_error(request: Request, exc: ServingError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        field = _field_path(first.get("loc", ()))
        if request.url.path == "/v1/plan":
            service.count("http", "plan", "invalid_argument")
        return _error_response(InvalidArgument(str(first.get("msg", "invalid")), field=field or "body"))

    @app.post(
        "/v1/plan",
        response_model=m.PlanResponse,
        responses=_ERRORS,
        dependencies=[Depends(authorize)],
        summary="Plan an action chunk for one observation",
    )
    async def plan(body: m.PlanRequest) -> m.PlanResponse:
        try:
            call = plan_call(body)
        except ServingError as exc:
            service.count("http", "plan", outcome_of(exc))
            raise
        reply = await service.plan(call, transport="http")
        return plan_response(reply, list(service.cameras))

    @app.get("/v1/info", dependencies=[Depends(authorize)], summary="Model, cameras, timing and safety limits")
    async def info() -> dict:
        return {**service.describe(), "server_version": server_version()}

    @app.get("/livez", summary="The process is up and its event loop answers")
    async def livez() -> dict:
        return {"live": True}

    @app.get(
        "/readyz",
        summary="Model loaded and warmed up, not shutting down, queue not saturated",
        responses={503: {"description": "not ready; `reasons` says why"}},
    )
    async def readyz() -> JSONResponse:
        reasons = [
            why
            for failed, why in (
                (not service.warmed_up, "model not warmed up"),
                (not service.accepting, "shutting down"),
                (service.worker.saturated, "planner queue saturated"),
            )
            if failed
        ]
        body = {
            "ready": not reasons,
            "reasons": reasons,
            "queue_depth": service.worker.waiting,
            "max_queue": service.worker.max_queue,
        }
        return JSONResponse(body, status_code=503 if reasons else 200)

    Instrumentator(registry=service.metrics.registry, excluded_handlers=["/metrics"]).instrument(app).expose(
        app, endpoint="/metrics", include_in_schema=True, summary="Prometheus metrics"
    )
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    return app


def _error_response(exc: ServingError) -> JSONResponse:
    body = m.ErrorResponse(
        error=m.ErrorBody(
            code=exc.code, message=str(exc), field=exc.field, violations=list(getattr(exc, "violations", []))
        )
    )
    headers = {}
    if isinstance(exc, Overloaded):
        headers["Retry-After"] = str(int(math.ceil(exc.retry_after_s)))
    if isinstance(exc, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body.model_dump(), status_code=exc.http_status, headers=headers)


def _field_path(loc: Iterable[object]) -> str:
    """Pydantic's location ``("body", "observation", "state", "joint_position", 3)`` as a field path,
    ``observation.state.joint_position[3]``."""
    path = ""
    for part in loc:
        if part == "body" and not path:
            continue
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


# ---------------------------------------------------------------------------------------- conversion
def _image(frame: m.CameraFrame, field: str) -> Image:
    try:
        data = base64.b64decode(frame.data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument("not valid base64", field=f"{field}[{frame.camera}].data") from None
    return Image(data=data, encoding=frame.encoding, height=frame.height, width=frame.width)


def _observation(obs: m.Observation, field: str, with_state: bool = True) -> Observation:
    frames = frames_by_camera(((f.camera, _image(f, f"{field}.frames")) for f in obs.frames), f"{field}.frames")
    state = None
    if with_state and obs.state is not None:
        s = obs.state
        state = State(
            joint_position=s.joint_position,
            cartesian_position=s.cartesian_position,
            gripper_position=s.gripper_position,
        )
    return Observation(frames=frames, timestamp_s=obs.timestamp_s, state=state)


def plan_call(body: m.PlanRequest) -> PlanCall:
    o = body.options
    return PlanCall(
        instruction=body.instruction,
        observation=_observation(body.observation, "observation"),
        session_id=body.session_id,
        sequence=body.sequence,
        history=[_observation(h, f"history[{i}]", with_state=False) for i, h in enumerate(body.history)],
        nominal=body.nominal.rows if body.nominal is not None and body.nominal.rows else None,
        nominal_space=body.nominal.space if body.nominal is not None else "cartesian_position",
        options=Options(
            num_proposals=o.num_proposals,
            refine_iters=o.refine_iters,
            flow_steps=o.flow_steps,
            nominal_perturbations=o.nominal_perturbations,
            seed=o.seed,
            return_heatmaps=o.return_heatmaps,
        ),
        deadline_s=None if o.deadline_ms is None else o.deadline_ms / 1000.0,
    )


def _predicted(stack: np.ndarray | None, cameras: list[str]) -> list[m.PredictedImage]:
    return [
        m.PredictedImage(
            frame=t,
            image=m.CameraFrame(
                camera=camera,
                encoding="png",
                width=img.width,
                height=img.height,
                data=base64.b64encode(img.data).decode(),
            ),
        )
        for t, camera, img in encode_rollout(stack, cameras)
    ]


def plan_response(reply: PlanReply, cameras: list[str]) -> m.PlanResponse:
    r = reply.result
    return m.PlanResponse(
        **reply.plain_fields(),
        stamp=m.ChunkStamp(t0_s=reply.t0_s, i0=reply.i0, dt_s=reply.dt_s),
        proposal_scores=[float(s) if math.isfinite(s) else None for s in np.asarray(r.proposal_scores).tolist()],
        refinement=[
            m.RefineStep(iteration=s.iteration, objective=s.objective, value=s.value, uncertainty=s.uncertainty)
            for s in r.refinement
        ],
        predicted_frames=_predicted(r.predicted_frames, cameras),
        heatmaps=_predicted(r.heatmaps, cameras),
    )
