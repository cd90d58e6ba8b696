"""The one validation of a plan request (planning/validation.py), without a model: the planner and the serving
layer both use it, so its messages name the field in the caller's terms."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from vidplan_server.planning.types import ModelInfo, OptionCounts, PlanningError, PlanOptions, PlanRequest, RobotState
from vidplan_server.planning.validation import (
    check_nominal,
    check_options,
    check_request,
    check_state,
    option_ranges,
)

INFO = ModelInfo(
    model_version="test@0",
    image_size=(64, 64),
    history=2,
    horizon=5,
    frame_stride=3,
    defaults=OptionCounts(12, 3, 1),
    maxima=OptionCounts(64, 50, 16),
)
HOME = np.array([0.444, 0.0, 0.381, np.pi, 0.0, 0.0])


def request(**change) -> PlanRequest:
    base = PlanRequest("pick up the cube", np.zeros((2, 3, 64, 64, 3), np.uint8), RobotState(np.zeros(7), HOME, 0.0))
    return replace(base, **change)


def test_defaults_fill_unset_counts():
    assert check_request(request(), INFO) == OptionCounts(12, 3, 1)
    assert check_request(request(options=PlanOptions(num_proposals=4, refine_iters=0)), INFO) == OptionCounts(4, 0, 1)


@pytest.mark.parametrize(
    "options, message",
    [
        (PlanOptions(num_proposals=0), "options.num_proposals: 0 is outside [1, 64]"),
        (PlanOptions(flow_steps=17), "options.flow_steps: 17 is outside [1, 16]"),
        (PlanOptions(refine_iters=True), "options.refine_iters: expected an integer, got True"),
        (PlanOptions(seed=2**64), "options.seed: 18446744073709551616 is outside [0, 18446744073709551615]"),
        (PlanOptions(deadline_s=float("inf")), "options.deadline_s: must be a finite number >= 0"),
        (PlanOptions(mode="dream"), "options.mode: 'dream' is not one of plan, policy"),
        (PlanOptions(mode="policy"), "options.mode: 'policy' needs a checkpoint with a policy module"),
    ],
)
def test_options_name_the_field(options, message):
    with pytest.raises(PlanningError) as info:
        check_request(request(options=options), INFO)
    assert str(info.value).startswith(message)
    assert info.value.field == message.split(":")[0]


def test_the_caller_names_the_fields():
    with pytest.raises(PlanningError, match=r"^observation\.state\.gripper_position: 1\.5 is outside \[0, 1\]"):
        check_state(np.zeros(7), HOME, 1.5, field="observation.state")
    with pytest.raises(PlanningError, match=r"^nominal\.space: 'joint_torque' is not one of"):
        check_nominal([[0.0] * 7], "joint_torque", space_field="nominal.space")
    with pytest.raises(PlanningError, match=r"^opts\.mode: 'policy' is not offered here"):
        check_options(
            PlanOptions(mode="policy"), option_ranges(INFO.maxima), ("plan",), "is not offered here", field="opts"
        )


def test_a_valid_request_passes_with_a_policy():
    with_policy = replace(INFO, modes=("plan", "policy"))
    assert check_request(request(options=PlanOptions(mode="policy", seed=np.uint64(7))), with_policy).flow_steps == 1
    assert check_options(PlanOptions(seed=np.int64(3)), option_ranges(INFO.maxima), ("plan",)).seed == 3


def test_model_info_as_json_keeps_the_info_layout():
    d = INFO.as_dict()
    assert list(d) == [
        "model_version",
        "cameras",
        "image_size",
        "history",
        "horizon",
        "frame_stride",
        "chunk_steps",
        "dt_s",
        "action_space",
        "nominal_spaces",
        "modes",
        "uq_methods",
        "default_uq_method",
        "device",
        "defaults",
        "limits",
    ]
    assert d["chunk_steps"] == 15 and d["limits"]["max_translation_per_step_m"] == 0.075
    assert d["defaults"] == {"num_proposals": 12, "refine_iters": 3, "flow_steps": 1}
