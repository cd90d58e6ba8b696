"""Thin robot-side client of the VidPlan planning server: gRPC, numpy and opencv; never torch.

- :class:`VidPlanClient` / :class:`AsyncVidPlanClient`: ``plan``, ``stream``, ``info``, ``health``;
- :mod:`vidplan_client.convert`: numpy views + robot state -> ``PlanRequest``; ``PlanResponse`` -> :class:`Plan`;
- :mod:`vidplan_client.robot_loop`: the 15 Hz DROID loop (:class:`RobotLoop`), holding position without a plan;
  :mod:`vidplan_client.chunks`: its chunk scheduler (which row to command when), pure;
- ``vidplan-client`` (:mod:`vidplan_client.cli`): ``info``, ``health``, ``plan`` for operators.

This package owns the contracts the server imports from it: the wire messages in :mod:`vidplan_client.wire`
(generated from ``proto/vidplan/v1/vidplan.proto``), the camera names, control rate and per-step limits in
:mod:`vidplan_client.contract`, and the keys of DROID's ``RobotEnv`` in :mod:`vidplan_client.droid`.

The names below load on first use, so ``import vidplan_client.contract`` does not import grpc or opencv.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import TYPE_CHECKING

_EXPORTS = {
    "ClientConfig": "vidplan_client.channel",
    "AsyncVidPlanClient": "vidplan_client.client",
    "VidPlanClient": "vidplan_client.client",
    "CAMERA_NAMES": "vidplan_client.contract",
    "Plan": "vidplan_client.convert",
    "PlanFailed": "vidplan_client.convert",
    "WireError": "vidplan_client.convert",
    "make_observation": "vidplan_client.convert",
    "make_request": "vidplan_client.convert",
    "make_state": "vidplan_client.convert",
    "plan_options": "vidplan_client.convert",
    "response_to_plan": "vidplan_client.convert",
    "LoopConfig": "vidplan_client.robot_loop",
    "RobotLoop": "vidplan_client.robot_loop",
    "StepRecord": "vidplan_client.robot_loop",
}

__all__ = [
    "CAMERA_NAMES",
    "AsyncVidPlanClient",
    "ClientConfig",
    "LoopConfig",
    "Plan",
    "PlanFailed",
    "RobotLoop",
    "StepRecord",
    "VidPlanClient",
    "WireError",
    "make_observation",
    "make_request",
    "make_state",
    "plan_options",
    "response_to_plan",
]
try:
    #: The installed distribution's version (client/pyproject.toml).
    __version__ = importlib.metadata.version("vidplan-client")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source tree on PYTHONPATH
    __version__ = "unknown"

if TYPE_CHECKING:
    from vidplan_client.channel import ClientConfig
    from vidplan_client.client import AsyncVidPlanClient, VidPlanClient
    from vidplan_client.contract import CAMERA_NAMES
    from vidplan_client.convert import (
        Plan,
        PlanFailed,
        WireError,
        make_observation,
        make_request,
        make_state,
        plan_options,
        response_to_plan,
    )
    from vidplan_client.robot_loop import LoopConfig, RobotLoop, StepRecord


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vidplan_client' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
