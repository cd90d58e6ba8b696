"""Recorded episodes as the wire observations a robot would send, and one virtual robot's pacing (pure).

:func:`load_episodes` reads episodes through the project's reader (:class:`~vidplan_server.data.reader.EpisodeDataset`:
our recordings, ``lerobot/droid_1.0.1`` and the older DROID port) and encodes every step once, with the client's
own builders (``make_state``, ``make_observation``: JPEG views at the dataset's resolution; the server resizes), so
the load generator spends no CPU on images while it runs; the decoded frames are dropped.

:class:`ReplayRobot` is one robot, without time or I/O of its own: tick ``k`` of its schedule (time
``start_s + k * dt_s``) is step ``(start_step + k) % T`` of its episode (episodes loop). :meth:`ReplayRobot.due`
says whether a plan should be asked for at a tick: none in flight and the current chunk's open-loop horizon used
up (the client's :class:`~vidplan_client.chunks.ChunkScheduler`, as in ``RobotLoop`` with ``lead_steps`` -1);
:meth:`ReplayRobot.request` builds the request (``make_request``; the history the server's model sees, the
observations ``frame_stride`` ticks earlier, as ``RobotLoop`` carries it); :meth:`ReplayRobot.answer` takes what
came back and says what the robot could do with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vidplan_client.chunks import ChunkScheduler
from vidplan_client.convert import PlanFailed, WireError, make_observation, make_request, make_state, response_to_plan
from vidplan_client.wire import vidplan_pb2 as pb

from vidplan_server.apps.loadtest.config import LoadTestError

#: What became of an answered request, from the robot's side (see :meth:`ReplayRobot.answer`).
USED, LATE, UNUSABLE, FAILED = "used", "late", "unusable", "failed"


@dataclass(frozen=True)
class EncodedEpisode:
    """One recorded episode as wire observations (timestamp 0; the robot stamps its own clock)."""

    name: str  # "<dataset folder>#<index>"
    instruction: str
    observations: tuple[pb.Observation, ...]  # one per step: three JPEG views and the robot state

    def __len__(self) -> int:
        return len(self.observations)


def encode_episode(episode, name: str, jpeg_quality: int = 90) -> EncodedEpisode:
    """An :class:`~vidplan_server.data.schema.Episode` (images ``(T, H, W, 3)`` uint8) -> :class:`EncodedEpisode`."""
    from vidplan_server.data.schema import CAMERA_NAMES

    observations = []
    for t in range(len(episode)):
        state = make_state(episode.joint_position[t], episode.cartesian_position[t], episode.gripper_position[t])
        images = {c: episode.images[c][t] for c in CAMERA_NAMES}
        observations.append(make_observation(images, state, 0.0, "jpeg", jpeg_quality))
    return EncodedEpisode(name, episode.language_instruction, tuple(observations))


def load_episodes(
    data: str | Path, count: int, jpeg_quality: int = 90, progress: Callable[[int], None] | None = None
) -> list[EncodedEpisode]:
    """The first ``count`` episodes of the dataset at ``data`` that have steps and an instruction (DROID has
    episodes without one; the server refuses a blank instruction), encoded; fewer when the dataset has fewer."""
    from vidplan_server.data.reader import EpisodeDataset

    dataset = EpisodeDataset(data)
    out = []
    for k in range(len(dataset)):
        if len(out) == count:
            break
        episode = dataset.load_episode(k, ground_truth=False)
        if len(episode) == 0 or not episode.language_instruction.strip():
            continue
        out.append(encode_episode(episode, f"{Path(data).name}#{k}", jpeg_quality))
        if progress is not None:
            progress(len(out))
    if not out:
        raise LoadTestError(f"--data {data}: no episode with steps and a language instruction to replay")
    return out


@dataclass(frozen=True)
class RobotSettings:
    """What every robot of a run shares. Times in seconds."""

    dt_s: float  # control period
    open_loop_horizon: int  # chunk rows executed before the next plan is due
    history_frames: int  # earlier observations carried per request (the model's T - 1; GetInfo ``history`` - 1)
    frame_stride: int  # control steps between them (GetInfo ``frame_stride``)
    options: pb.PlanOptions  # deadline, seed, proposal counts


class ReplayRobot:
    """One virtual robot replaying ``episode`` from ``start_step``; its tick ``k`` is at ``start_s + k * dt_s``."""

    def __init__(
        self,
        index: int,
        episode: EncodedEpisode,
        session_id: str,
        settings: RobotSettings,
        start_s: float,
        start_step=0,
    ) -> None:
        self.index, self.episode, self.session_id, self.settings = index, episode, session_id, settings
        self.start_s, self.start_step = start_s, start_step
        self.scheduler = ChunkScheduler(settings.open_loop_horizon)
        self.sequence = 0  # last sequence number sent
        self.in_flight: int | None = None  # sequence number of the request in flight

    def tick_time(self, tick: int) -> float:
        return self.start_s + tick * self.settings.dt_s

    def step_at(self, tick: int) -> int:
        """The episode step the robot is at on ``tick``."""
        return (self.start_step + tick) % len(self.episode)

    def due(self, tick: int) -> bool:
        """Whether to ask for a plan at ``tick``: none in flight and no chunk row left within the horizon."""
        return self.in_flight is None and self.scheduler.rows_left(self.tick_time(tick)) is None

    def _observation(self, tick: int) -> pb.Observation:
        obs = pb.Observation()
        obs.CopyFrom(self.episode.observations[self.step_at(tick)])
        obs.timestamp_s = self.tick_time(tick)
        return obs

    def request(self, tick: int) -> pb.PlanRequest:
        """The request of ``tick`` (its observation and history); marks it in flight."""
        s = self.settings
        earlier = [tick - j * s.frame_stride for j in range(s.history_frames, 0, -1)]
        # Before the robot has observed them all, the server's own session history is better than a gappy one.
        history = [self._observation(k) for k in earlier] if all(k >= 0 for k in earlier) else []
        self.sequence += 1
        request = make_request(
            self.session_id,
            self.sequence,
            self.episode.instruction,
            self._observation(tick),
            history=history,
            options=s.options,
        )
        self.in_flight = self.sequence
        return request

    def answer(self, t: float, response: pb.PlanResponse | None) -> str:
        """The reply to the request in flight at loop time ``t`` (None: no plan came back, an error or a timeout):
        :data:`USED` (its chunk is current), :data:`LATE` (all its rows within the horizon had passed),
        :data:`UNUSABLE` (another sequence or session, or a chunk that does not fit the wire) or :data:`FAILED`."""
        sequence, self.in_flight = self.in_flight, None
        if response is None:
            return FAILED
        if response.sequence != sequence or (response.session_id and response.session_id != self.session_id):
            return UNUSABLE
        try:
            plan = response_to_plan(response)
        except (PlanFailed, WireError):
            return UNUSABLE
        return LATE if self.scheduler.offer(plan, t) is not None else USED
