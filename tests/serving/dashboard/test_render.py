"""The dashboard's heatmaps are the planner's own: recomputed from the plan's history, chunk and seed."""

from __future__ import annotations

import numpy as np
import pytest

from vidplan_server.planning.types import PlanOptions, PlanRequest, RobotState
from vidplan_server.serving.dashboard.config import RenderModel
from vidplan_server.serving.dashboard.events import render_event, sheet
from vidplan_server.serving.dashboard.render import PlanRenderer, ProcessRenderer, RenderJob


@pytest.fixture(scope="module")
def tiny_planner(tiny_heads_bundle):
    from vidplan_server.planning.planner import Planner

    return Planner.load(tiny_heads_bundle)


@pytest.mark.parametrize("refine_iters", [0, 2])
def test_rendered_frames_and_colour_map_are_the_planners(tiny_planner, short_episodes, refine_iters):
    from vidplan_server.data.schema import CAMERA_NAMES

    ep = short_episodes[0]
    steps = [6, 9]  # two history frames, frame_stride apart
    history = np.stack([np.stack([ep.images[c][s] for c in CAMERA_NAMES]) for s in steps])
    state = RobotState(ep.joint_position[9], ep.cartesian_position[9], float(np.ravel(ep.gripper_position[9])[0]))
    options = PlanOptions(num_proposals=6, refine_iters=refine_iters, seed=11, return_heatmaps=True)
    result = tiny_planner.plan(PlanRequest(ep.language_instruction, history, state, options=options))

    job = RenderJob("robot", 1, 0.0, history, result.actions, seed=11, flow_steps=None)
    rendered = PlanRenderer(tiny_planner)(job)
    # The same rollout: decoded frames and the latent colour map match the planner's own to rounding.
    assert rendered.predicted.shape == result.predicted_frames.shape == rendered.pixel.shape
    assert np.abs(rendered.predicted.astype(int) - result.predicted_frames).max() <= 1
    assert np.abs(rendered.latent.astype(int) - result.heatmaps).max() <= 1
    assert np.array_equal(rendered.views, history[-1])
    # A reply that carried the images is not decoded again.
    reused = PlanRenderer(tiny_planner)(
        RenderJob(
            "robot",
            1,
            0.0,
            history,
            result.actions,
            11,
            None,
            predicted=result.predicted_frames,
            heatmaps=result.heatmaps,
        )
    )
    assert reused.latent is result.heatmaps and reused.pixel.shape == rendered.pixel.shape


def test_the_render_process_renders_what_the_planner_judged(tiny_heads_bundle, tiny_planner, short_episodes):
    from vidplan_server.data.schema import CAMERA_NAMES

    ep = short_episodes[1]
    history = np.stack([np.stack([ep.images[c][s] for c in CAMERA_NAMES]) for s in (3, 6)])
    state = RobotState(ep.joint_position[6], ep.cartesian_position[6], float(np.ravel(ep.gripper_position[6])[0]))
    result = tiny_planner.plan(
        PlanRequest(
            ep.language_instruction, history, state, options=PlanOptions(num_proposals=6, refine_iters=1, seed=5)
        )
    )
    job = RenderJob("robot", 1, 0.0, history, result.actions, seed=5, flow_steps=None)
    renderer = ProcessRenderer(RenderModel(str(tiny_heads_bundle)), nice=19, threads=1)
    try:
        first, second = renderer(job), renderer(job)  # one process, started once
    finally:
        renderer.close()
    here = PlanRenderer(tiny_planner)(job)
    for name in ("predicted", "latent", "pixel"):
        assert np.abs(getattr(first, name).astype(int) - getattr(here, name)).max() <= 1, name
    assert np.array_equal(first.latent, second.latent)


def test_sheets_put_views_in_rows_and_frames_in_columns():
    stack = np.zeros((5, 3, 4, 6, 3), np.uint8)
    for t in range(5):
        for v in range(3):
            stack[t, v] = 10 * t + v
    out = sheet(stack)
    assert out.shape == (12, 30, 3)
    assert out[4 * 2, 6 * 3, 0] == 32  # row of view 2, column of frame 3
    event = render_event("a", 1, 0.0, stack[0], stack, stack, None, 1.0, ["a", "b", "c"])
    assert event["pixel"] is None and event["latent"].startswith("data:image/png;base64,")
