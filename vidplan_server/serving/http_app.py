"""HTTP transport: a FastAPI app over :class:`PlanService`.

``POST /v1/plan`` and ``GET /v1/info`` (bearer token when configured), ``/livez``, ``/readyz``,
``/metrics`` (Prometheus text) and the OpenAPI docs at ``/docs`` (these two behind the token too unless
metrics are public). Routes convert and delegate; :func:`_error_response` is the one place where service
errors become HTTP statuses, with the same messages the gRPC transport sends, and every error body, those
of FastAPI and Starlette included, is ``{"error": {"code", "message", "field", "violations"}}``.

Order of the checks on a request: the token (:class:`BearerAuth`, before a byte of the body is read), the
body size (:class:`BodyLimit`, 413), JSON and types (pydantic, 400), then the service's checks. The OpenAPI
schema (:func:`_openapi`) is written from the running service: its camera names, ranges and size limits,
bearer auth only when a token is configured, and the statuses each route can answer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_fastapi_instrumentator import Instrumentator
from starlette.exceptions import HTTPException as StarletteHTTPException

from vidplan_server import __version__
from vidplan_server.planning.validation import OPTIONAL_COUNTS, IntRange, Range, show
from vidplan_server.serving import http_models as m
from vidplan_server.serving.dashboard.config import DashboardConfig
from vidplan_server.serving.dashboard.routes import mount_live as mount_dashboard
from vidplan_server.serving.errors import (
    InvalidArgument,
    Overloaded,
    ServingError,
    TooLarge,
    Unauthenticated,
    bearer_token_matches,
    outcome_of,
)
from vidplan_server.serving.images import encode_rollout
from vidplan_server.serving.messages import (
    Image,
    Observation,
    Options,
    PlanCall,
    PlanReply,
    State,
    camera_key,
    frames_by_camera,
)
from vidplan_server.serving.service import PlanService
from vidplan_server.serving.validation import FIELD_RANGES, Limits, check_range

#: Paths that need the token when one is configured; with private metrics also METRICS_AND_DOCS.
API_PREFIX = "/v1/"
METRICS_AND_DOCS = ("/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
#: The ``call`` label of the request counter by path (a fixed set; never a path a client made up).
CALLS = {"/v1/plan": "plan", "/v1/info": "info", "/metrics": "metrics"}
#: gRPC status names of the HTTP statuses Starlette answers on its own.
_HTTP_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    413: "INVALID_ARGUMENT",
    500: "INTERNAL",
}
_BASE64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
_PRINTABLE_ASCII = r"^[ -~]*$"

log = logging.getLogger(__name__)


def _error_body(code: str, message: str, field: str | None = None, violations: Iterable[str] = ()) -> dict:
    return m.ErrorResponse(
        error=m.ErrorBody(code=code, message=message, field=field, violations=list(violations))
    ).model_dump()


def _error_response(exc: ServingError) -> JSONResponse:
    headers = {}
    if isinstance(exc, Overloaded):
        headers["Retry-After"] = str(int(math.ceil(exc.retry_after_s)))
    if isinstance(exc, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    body = _error_body(exc.code, str(exc), exc.field, getattr(exc, "violations", []))
    return JSONResponse(body, status_code=exc.http_status, headers=headers)


class BearerAuth:
    """ASGI middleware: without ``authorization: Bearer <token>`` a protected path is 401 before its body is read.

    ``/v1/*`` is protected; so are metrics and the docs unless ``public_metrics``. Health stays open."""

    def __init__(self, app, token: str, public_metrics: bool, service: PlanService) -> None:
        self.app, self.token, self.service = app, token, service
        self.protected = (API_PREFIX,) if public_metrics else (API_PREFIX, *METRICS_AND_DOCS)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.protected):
            header = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), None)
            if not bearer_token_matches(header, self.token):
                call = CALLS.get(scope["path"], "docs" if scope["path"] in METRICS_AND_DOCS else "other")
                self.service.count("http", call, "unauthenticated")
                self.service.log.warning(("http", "unauthenticated"), f"refused HTTP {call} without a valid token")
                error = Unauthenticated("missing or wrong bearer token", field="authorization")
                return await _error_response(error)(scope, receive, send)
        await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: refuse a request body over ``max_bytes`` (413) before it is parsed: by its Content-Length
    when given; a chunked body is read here up to the limit (and handed on whole when it fits)."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _error(self, size: str) -> JSONResponse:
        return _error_response(
            TooLarge(f"{size} is larger than the server's limit of {self.max_bytes} bytes", field="body")
        )

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


def _responses(*statuses: int) -> dict:
    descriptions = {
        400: "a field is missing, malformed or out of range (`field` names it), or the body is not JSON",
        401: "missing or wrong bearer token",
        413: "the body is larger than the server's limit",
        422: "no plan within the safety limits (`violations` lists why); hold the robot's pose",
        503: "the planner queue is full (`Retry-After`), or the server is warming up or shutting down",
        504: "the deadline passed before the planner started, or is shorter than its minimum informed pass",
    }
    return {s: {"model": m.ErrorResponse, "description": descriptions[s]} for s in statuses}


def create_app(
    service: PlanService,
    token: str | None = None,
    max_body_bytes: int = 48 * 2**20,
    public_metrics: bool = True,
    dashboard: DashboardConfig | None = DashboardConfig(),
) -> FastAPI:
    """The HTTP API of ``service``; ``token`` (optional) is the bearer token ``/v1/*`` requires, and with
    ``public_metrics`` False also ``/metrics`` and the docs. With ``dashboard`` (None: off) the operator dashboard
    is served at ``/dashboard`` (:mod:`vidplan_server.serving.dashboard`), its data behind the same token."""
    app = FastAPI(
        title="VidPlan",
        version=__version__,
        description="Action chunks for a Franka in the DROID setup, planned in a learned video world model.",
    )
    auth = (401,) if token else ()
    private_auth = auth if not public_metrics else ()

    @app.exception_handler(ServingError)
    async def on_serving_error(request: Request, exc: ServingError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            field, message = "body", f"not valid JSON ({first.get('ctx', {}).get('error', 'could not be parsed')})"
            service.log.warning(("http", "malformed"), f"refused an HTTP body that is not JSON: {message}")
        else:
            field, message = _field_path(first.get("loc", ())) or "body", str(first.get("msg", "invalid"))
        if request.url.path == "/v1/plan":
            service.count("http", "plan", "invalid_argument")
        return _error_response(InvalidArgument(message, field=field))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "UNKNOWN")
        if exc.status_code == 400:  # FastAPI could not read the body at all (not UTF-8, nested too deeply, ...)
            message, field = "could not be parsed as JSON (invalid UTF-8, nested too deeply, or not JSON)", "body"
            service.log.warning(("http", "malformed"), f"refused an HTTP body on {show(request.url.path)}: {message}")
            if request.url.path == "/v1/plan":
                service.count("http", "plan", "invalid_argument")
        else:
            message, field = str(exc.detail), None
        return JSONResponse(_error_body(code, message, field), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def on_internal_error(request: Request, exc: Exception) -> JSONResponse:
        service.log.log(
            logging.ERROR, "internal", f"HTTP {show(request.url.path)} failed: {type(exc).__name__}", exc_info=exc
        )
        return JSONResponse(_error_body("INTERNAL", f"internal error: {type(exc).__name__}"), status_code=500)

    @app.post(
        "/v1/plan",
        response_model=m.PlanResponse,
        responses=_responses(400, *auth, 413, 422, 503, 504),
        summary="Plan an action chunk for one observation",
    )
    async def plan(body: m.PlanRequest, request: Request) -> m.PlanResponse | Response:
        try:
            call = plan_call(body)
        except ServingError as exc:
            service.count("http", "plan", outcome_of(exc))
            raise
        planning = asyncio.ensure_future(service.plan(call, transport="http"))
        hung_up = asyncio.ensure_future(_client_gone(request))
        try:
            await asyncio.wait({planning, hung_up}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hung_up.cancel()
        if not planning.done():  # the client went away: drop the call (it leaves the queue if still there)
            planning.cancel()
            with contextlib.suppress(asyncio.CancelledError, ServingError):
                await planning
            return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
        return plan_response(planning.result(), list(service.cameras))

    @app.get("/v1/info", responses=_responses(*auth), summary="Model, cameras, timing, safety and request limits")
    async def info() -> dict[str, Any]:
        return {**service.describe(), "server_version": __version__}

    @app.get("/livez", summary="The process is up and its event loop answers")
    async def livez() -> m.Liveness:
        return m.Liveness(live=True)

    @app.get(
        "/readyz",
        response_model=m.Readiness,
        summary="Model loaded and warmed up, not shutting down, queue not saturated",
        responses={503: {"model": m.Readiness, "description": "not ready; `reasons` says why"}},
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
        body = m.Readiness(
            ready=not reasons, reasons=reasons, queue_depth=service.worker.waiting, max_queue=service.worker.max_queue
        )
        return JSONResponse(body.model_dump(), status_code=503 if reasons else 200)

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses=_responses(*private_auth),
        summary="Prometheus metrics (text exposition format)",
    )
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # Requests by route template ("/v1/plan"), method and status class; a path no route has is "none".
    if dashboard is not None:
        mount_dashboard(app, service, dashboard, token)
    Instrumentator(
        registry=service.metrics.registry, excluded_handlers=["/metrics", "/dashboard.*"], should_group_untemplated=True
    ).instrument(app)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    if token:
        app.add_middleware(BearerAuth, token=token, public_metrics=public_metrics, service=service)
    app.openapi = lambda: _openapi(app, service.limits, token is not None, public_metrics)
    return app


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body has been read, so the next ASGI message is that)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
        if not message.get("more_body", False) and not message.get("body"):
            await asyncio.sleep(0.05)  # a server that answers "no more body" again at once: poll gently


# ---------------------------------------------------------------------------------------- OpenAPI
def _openapi(app: FastAPI, limits: Limits, token: bool, public_metrics: bool) -> dict:
    """The schema as this server runs: its limits as constraints, its auth, and examples that reach the planner."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    props = {name: s.get("properties", {}) for name, s in schema["components"]["schemas"].items()}
    r = limits.ranges
    frame = props["CameraFrame"]
    frame["camera"].update(enum=list(limits.cameras))
    frame["width"].update(_bounds(r["observation.frames[].width"]))
    frame["height"].update(_bounds(r["observation.frames[].height"]))
    frame["data"].update(minLength=4, pattern=_BASE64, contentEncoding="base64")
    state = props["RobotState"]
    state["joint_position"].update(_vector(r["observation.state.joint_position"]))
    state["cartesian_position"].update(_vector(r["observation.state.cartesian_position"]))
    state["gripper_position"].update(_bounds(r["observation.state.gripper_position"]))
    cameras = len(limits.cameras)
    for name in ("Observation-Input", "Observation"):
        if name in props:
            props[name]["timestamp_s"].update(_bounds(r["observation.timestamp_s"]))
            props[name]["frames"].update(minItems=cameras, maxItems=cameras)
    request = props["PlanRequest"]
    request["session_id"].update(maxLength=limits.max_session_id_chars, pattern=_PRINTABLE_ASCII)
    request["sequence"].update(_bounds(r["sequence"]))
    request["instruction"].update(minLength=1, maxLength=limits.max_instruction_chars, pattern=r"\S")
    request["history"].update(maxItems=limits.max_history)
    widths = [len(r[f"nominal.rows ({space})"].low) for space in ("cartesian_position", "joint_velocity")]
    props["NominalChunk"]["rows"].update(
        maxItems=limits.max_nominal_steps,
        items={"type": "array", "items": {"type": "number"}, "minItems": min(widths), "maxItems": max(widths)},
    )
    request["reference"].update(
        maxItems=limits.max_nominal_steps,
        items={"type": "array", "items": {"type": "number"}, "minItems": widths[0], "maxItems": widths[0]},
    )
    for name in (*OPTIONAL_COUNTS, "deadline_ms", "seed"):
        option = props["PlanOptions"][name]
        target = next((a for a in option.get("anyOf", ()) if a.get("type") == "integer"), option)
        target.update(_bounds(r[f"options.{name}"]))
    props["PlanOptions"]["mode"].update(enum=list(limits.modes))  # "policy" only when the bundle has a policy
    uq_method = props["PlanOptions"]["uq_method"]  # anyOf [string enum, null]: only the bundle's methods
    next(a for a in uq_method["anyOf"] if a.get("type") == "string").update(enum=list(limits.uq_methods))
    schema["components"]["schemas"]["PlanRequest"]["examples"] = [_example(limits)]
    if token:
        schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        for path, operations in schema["paths"].items():
            if path.startswith(API_PREFIX) or (not public_metrics and path in METRICS_AND_DOCS):
                for operation in operations.values():
                    operation["security"] = [{"bearer": []}]
    app.openapi_schema = schema
    return schema


def _bounds(bounds: Range | IntRange) -> dict:
    return {"minimum": bounds.low, "maximum": bounds.high}


def _vector(bounds: Range) -> dict:
    n = max(len(b) for b in (bounds.low, bounds.high) if isinstance(b, tuple))
    lo, hi = np.broadcast_to(bounds.low, (n,)), np.broadcast_to(bounds.high, (n,))
    return {
        "minItems": n,
        "maxItems": n,
        "prefixItems": [
            {"type": "number", "minimum": float(a), "maximum": float(b)} for a, b in zip(lo, hi, strict=True)
        ],
    }


def _example(limits: Limits) -> dict:
    """A request that reaches the planner: 1x1 raw views (resized up), the state at the simulator's home pose."""
    pixel = base64.b64encode(bytes(3)).decode()
    return {
        "session_id": "",
        "sequence": 1,
        "instruction": "put the red cube in the tray",
        "observation": {
            "timestamp_s": 1.0,
            "frames": [
                {"camera": c, "encoding": "raw", "width": 1, "height": 1, "data": pixel} for c in limits.cameras
            ],
            "state": {
                "joint_position": [0.0, -0.35, 0.0, -2.3, 0.0, 1.95, 0.7854],
                "cartesian_position": [0.4444, 0.0, 0.3806, 3.1416, 0.0, 0.0],
                "gripper_position": 0.0,
            },
        },
        "options": {"num_proposals": 6, "refine_iters": 0},
    }


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
        raise InvalidArgument("not valid base64", field=f"{field}[{camera_key(frame.camera)}].data") from None
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
    if o.deadline_ms is not None:
        check_range(o.deadline_ms, FIELD_RANGES["options.deadline_ms"], "options.deadline_ms")
    return PlanCall(
        instruction=body.instruction,
        observation=_observation(body.observation, "observation"),
        session_id=body.session_id,
        sequence=body.sequence,
        history=[_observation(h, f"history[{i}]", with_state=False) for i, h in enumerate(body.history)],
        nominal=body.nominal.rows if body.nominal is not None and body.nominal.rows else None,
        nominal_space=body.nominal.space if body.nominal is not None else "cartesian_position",
        reference=body.reference or None,
        options=Options(
            **{name: getattr(o, name) for name in OPTIONAL_COUNTS},
            seed=o.seed,
            return_heatmaps=o.return_heatmaps,
            mode=o.mode,
            uq_method=o.uq_method,
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
