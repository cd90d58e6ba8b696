"""What drives the simulated robot in the closed-loop benchmark: the agent interface and the scripted expert.

An agent is asked for an action chunk whenever the runner needs one (the open-loop horizon ran out or the chunk
is used up) and sees the recent observations and the instruction::

    agent.reset(env, seed)                 # once per episode, after env.reset(seed)
    step = agent.act(history, instruction) # history: the last ``history_steps`` env.get_observation() dicts

``AgentStep.actions`` is ``(S, 7)``: DROID ``cartesian_position`` targets (x, y, z in m in the robot base frame;
roll, pitch, yaw in rad, extrinsic XYZ) + gripper in [0, 1] (0 open), one row per 15 Hz control step, S >= 1;
row 0 is executed at the current step. ``AgentStep.info`` may carry ``"kind"`` (str, e.g. the winning proposal's
kind), ``"plan_ms"`` (float, the agent's own planning time), ``"heatmaps"`` (``(H, V, h, w, 3)`` uint8: the plan's
uncertainty overlay per predicted frame H and view V, views in ``CAMERA_NAMES`` order) and ``"confidence"``
(float); the runner records them and shows the heatmaps in the episode videos.

``build_agent`` makes the agents by name: ``expert`` here; ``policy``, ``vidplan``, ``vidplan-no-uq`` and
``vidplan-basis`` in ``closed_loop.planning_agents`` (imported only when one of them is asked for, so the expert
runs without torch models).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from vidplan_server.evaluation.closed_loop.names import AGENT_NAMES
from vidplan_server.sim.expert import ScriptedExpert

if TYPE_CHECKING:
    from vidplan_server.sim.robot_env import SimRobotEnv

PLANNING_AGENTS_MODULE = "vidplan_server.evaluation.closed_loop.planning_agents"


@dataclass
class AgentStep:
    actions: np.ndarray  # (S, 7) cartesian_position (m, rad) + gripper [0, 1] at 15 Hz, S >= 1
    info: dict = field(default_factory=dict)  # optional: kind, plan_ms, heatmaps (H, V, h, w, 3) uint8, confidence


class Agent(Protocol):
    name: str

    def reset(self, env: SimRobotEnv, seed: int) -> None: ...

    def act(self, history: list[dict], instruction: str) -> AgentStep: ...


class AgentUnavailable(RuntimeError):
    """An agent name that cannot be built here; the message names the agent and why."""


class ExpertAgent:
    """The scripted expert of the recordings (no failure mode), as an agent: the upper reference of the benchmark.

    It reads the simulator directly (``env.scene``, ``env.task``), not the observations. Its script is a generator
    of single actions; ``act`` returns the next ``chunk_steps`` of them without consuming them and, at the next
    call, drops as many as the runner executed meanwhile (read from the observation's step counter). So the robot
    follows the script row by row whatever the open-loop horizon. After the script ends it holds the last action.
    """

    name = "expert"

    def __init__(self, chunk_steps: int = 15) -> None:
        if chunk_steps < 1:
            raise ValueError(f"chunk_steps must be >= 1, got {chunk_steps}")
        self.chunk_steps = chunk_steps
        self._script: Iterator[np.ndarray] | None = None
        self._buffer: list[np.ndarray] = []
        self._buffer_step = 0  # the control step of _buffer[0]
        self._last: np.ndarray | None = None

    def reset(self, env: SimRobotEnv, seed: int) -> None:
        if env.task is None:
            raise RuntimeError("ExpertAgent.reset: call env.reset(seed) first")
        rng = np.random.default_rng([seed, 1])  # the action noise; differs from the scene's stream
        self._script = ScriptedExpert(env.scene, env.task, rng, mode=None).actions()
        self._buffer, self._buffer_step, self._last = [], env.steps, None

    def act(self, history: list[dict], instruction: str) -> AgentStep:
        if self._script is None:
            raise RuntimeError("ExpertAgent.act before reset")
        step = int(history[-1]["timestamp"]["step"])
        executed = step - self._buffer_step
        if executed < 0:
            raise RuntimeError(f"ExpertAgent: observation step {step} precedes the last chunk's {self._buffer_step}")
        del self._buffer[:executed]
        self._buffer_step = step
        while len(self._buffer) < self.chunk_steps:
            action = next(self._script, None)
            if action is None:
                if self._last is None:
                    raise RuntimeError("ExpertAgent: the expert's script yielded no action")
                action = self._last
            self._last = action
            self._buffer.append(action)
        return AgentStep(np.stack(self._buffer[: self.chunk_steps]).astype(np.float64), {"kind": "expert"})


def check_agent(name: str) -> None:
    """Raise :class:`AgentUnavailable` naming ``name`` when it cannot be built here (cheap: imports no model)."""
    if name not in AGENT_NAMES:
        raise AgentUnavailable(f"agent {name!r}: unknown; choose from {', '.join(AGENT_NAMES)}")
    if name != "expert" and importlib.util.find_spec(PLANNING_AGENTS_MODULE) is None:
        raise AgentUnavailable(_missing(name))


def _missing(name: str) -> str:
    return (
        f"agent {name!r}: needs {PLANNING_AGENTS_MODULE}, which is not installed in this checkout "
        "(only 'expert' runs without it)"
    )


def build_agent(name: str, ckpt: Path | str | None = None, device: str = "cpu", **options) -> Agent:
    """The agent called ``name`` (one of :data:`AGENT_NAMES`).

    ``expert`` takes ``chunk_steps`` as option and ignores ``ckpt`` and ``device``; every other name is built by
    ``planning_agents.build_planning_agent(name, ckpt, device, **options)``. Raises :class:`AgentUnavailable`
    naming the agent when the name is unknown or its module is missing.
    """
    check_agent(name)
    if name == "expert":
        return ExpertAgent(**options)
    try:
        module = importlib.import_module(PLANNING_AGENTS_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != PLANNING_AGENTS_MODULE:
            raise  # a dependency of that module is missing: let its own error speak
        raise AgentUnavailable(_missing(name)) from None
    return module.build_planning_agent(name, ckpt, device, **options)
