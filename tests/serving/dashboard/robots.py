"""A robot for the dashboard tests: replays a recorded episode's views and states through ``POST /v1/plan``."""

from __future__ import annotations

import base64

import httpx
import numpy as np

from vidplan_server.data.schema import CAMERA_NAMES


class EpisodeRobot:
    """Plans step ``k`` of ``episode`` as session ``session`` (sequence and robot time rise with every call)."""

    def __init__(self, base_url: str, session: str, episode, token: str | None = None, **options) -> None:
        self.base_url, self.session, self.episode = base_url, session, episode
        self.headers = {"authorization": f"Bearer {token}"} if token else {}
        self.options = {"num_proposals": 6, "refine_iters": 2, "flow_steps": 1, **options}
        self.sequence = 0

    def request(self, step: int) -> dict:
        ep = self.episode
        step = min(step, len(ep) - 1)
        self.sequence += 1
        frames = []
        for cam in CAMERA_NAMES:
            image = np.ascontiguousarray(ep.images[cam][step])
            frames.append(
                {
                    "camera": cam,
                    "encoding": "raw",
                    "width": int(image.shape[1]),
                    "height": int(image.shape[0]),
                    "data": base64.b64encode(image.tobytes()).decode(),
                }
            )
        return {
            "session_id": self.session,
            "sequence": self.sequence,
            "instruction": ep.language_instruction,
            "observation": {
                "timestamp_s": 0.2 * self.sequence,
                "frames": frames,
                "state": {
                    "joint_position": [float(v) for v in ep.joint_position[step]],
                    "cartesian_position": [float(v) for v in ep.cartesian_position[step]],
                    "gripper_position": float(np.ravel(ep.gripper_position[step])[0]),
                },
            },
            "options": {**self.options, "seed": self.sequence},
        }

    def plan(self, step: int, timeout_s: float = 120.0) -> dict:
        """One plan; raises on an HTTP error."""
        response = httpx.post(
            f"{self.base_url}/v1/plan", json=self.request(step), headers=self.headers, timeout=timeout_s
        )
        response.raise_for_status()
        return response.json()
