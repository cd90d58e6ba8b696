"""Thin robot-side client of the VidPlan planning server: gRPC, numpy and opencv; never torch.

- :class:`VidPlanClient` / :class:`AsyncVidPlanClient`: ``plan``, ``stream``, ``info``, ``health``;
- :mod:`vidplan_client.convert`: numpy views + robot state -> ``PlanRequest``; ``PlanResponse`` -> :class:`Plan`;
- :mod:`vidplan_client.robot_loop`: the 15 Hz DROID loop (:class:`RobotLoop`), holding position without a plan;
- ``vidplan-client`` (:mod:`vidplan_client.cli`): ``info``, ``health``, ``plan`` for operators.

The wire messages are in :mod:`vidplan_client.wire` (generated from ``proto/vidplan/v1/vidplan.proto``).
"""

from vidplan_client.channel import ClientConfig
from vidplan_client.client import AsyncVidPlanClient, VidPlanClient
from vidplan_client.convert import (
    CAMERA_NAMES,
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

__all__ = [
    "CAMERA_NAMES", "AsyncVidPlanClient", "ClientConfig", "LoopConfig", "Plan", "PlanFailed", "RobotLoop",
    "StepRecord", "VidPlanClient", "WireError", "make_observation", "make_request", "make_state", "plan_options",
    "response_to_plan",
]
__version__ = "0.1.0"
