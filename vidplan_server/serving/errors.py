"""The serving layer's one exception hierarchy; each transport maps it to its status codes once.

Every error carries a transport-neutral ``code`` (the gRPC status name) and, for bad requests, the
``field`` it is about, so the gRPC servicer and the HTTP app report the same message for the same
mistake. Planner exceptions (:class:`~vidplan_server.planning.types.PlanningError`,
:class:`~vidplan_server.planning.types.UnsafePlanError`) are converted by :func:`from_planner_error`.
"""

from __future__ import annotations

import hmac
import re

from vidplan_server.planning.types import PlanningError, UnsafePlanError


class ServingError(Exception):
    """Base class. ``code`` is the gRPC status name; ``http_status`` its HTTP counterpart."""

    code = "INTERNAL"
    http_status = 500

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class InvalidArgument(ServingError):
    """A request field is missing, malformed or out of range; the message starts with the field."""

    code = "INVALID_ARGUMENT"
    http_status = 400


class TooLarge(InvalidArgument):
    """A request body above the configured size (HTTP 413; gRPC enforces its own message limit)."""

    http_status = 413


class Unauthenticated(ServingError):
    """Bearer token missing or wrong."""

    code = "UNAUTHENTICATED"
    http_status = 401


class Overloaded(ServingError):
    """The planner queue is full; the request was refused at once instead of waiting.

    ``retry_after_s`` is the server's estimate of when a slot frees up (seconds).
    """

    code = "RESOURCE_EXHAUSTED"
    http_status = 503

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def bearer_token_matches(header: str | bytes | None, token: str) -> bool:
    """Whether an ``authorization`` value is ``Bearer <token>``: the scheme in any case (RFC 7235), the token
    compared in constant time."""
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    scheme, _, given = (header or "").strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


class DeadlineExceeded(ServingError):
    """The request's deadline passed (in the queue, or while its images were decoded), or it is shorter than
    the planner's minimum informed pass."""

    code = "DEADLINE_EXCEEDED"
    http_status = 504


class Unavailable(ServingError):
    """The server is not ready yet or is shutting down."""

    code = "UNAVAILABLE"
    http_status = 503


class NoSafePlan(ServingError):
    """The planner found no chunk within the safety limits; the robot should hold its pose."""

    code = "FAILED_PRECONDITION"
    http_status = 422

    def __init__(self, message: str, *, violations: list[str] | None = None) -> None:
        super().__init__(message)
        self.violations = list(violations or [])


#: The planner names request fields by its own types; on the wire the robot state sits inside the observation,
#: the options' names sit in ``options`` and the nominal chunk's action space is ``nominal.space``.
_WIRE_PATHS = (
    ("state.", "observation.state."),
    ("nominal_space", "nominal.space"),
    ("num_proposals", "options.num_proposals"),
    ("nominal_perturbations", "options.nominal_perturbations"),
    ("options.deadline_s", "deadline"),
)
_FIELD_PREFIX = re.compile(r"^([A-Za-z_][\w.\[\]]*): (.*)$", re.DOTALL)


def wire_field(planner_path: str) -> str:
    """A planner's field path (``state.gripper_position``) as the wire names it
    (``observation.state.gripper_position``)."""
    for planner, wire in _WIRE_PATHS:
        if planner_path == planner or planner_path.startswith(planner) and planner.endswith("."):
            return wire + planner_path[len(planner) :]
    return planner_path


def from_planner_error(exc: Exception) -> ServingError | None:
    """The serving error for a planner exception, or ``None`` when it is not a known planner error.

    A planner message starts with the field it is about (``state.gripper_position: ...``); that becomes the
    error's ``field``, in the wire's names."""
    if isinstance(exc, PlanningError):
        if exc.field is not None:
            return InvalidArgument(exc.problem, field=wire_field(exc.field))
        match = _FIELD_PREFIX.match(str(exc))
        if match is None:
            return InvalidArgument(str(exc))
        return InvalidArgument(match.group(2), field=wire_field(match.group(1)))
    if isinstance(exc, UnsafePlanError):
        return NoSafePlan(str(exc), violations=exc.violations)
    return None


_OUTCOMES: dict[type[ServingError], str] = {
    InvalidArgument: "invalid_argument",
    Overloaded: "overloaded",
    DeadlineExceeded: "deadline_exceeded",
    NoSafePlan: "no_safe_plan",
    Unauthenticated: "unauthenticated",
    Unavailable: "unavailable",
}


def outcome_of(exc: BaseException) -> str:
    """The ``outcome`` label of ``vidplan_requests_total`` for an exception."""
    return _OUTCOMES.get(type(exc), "error")
