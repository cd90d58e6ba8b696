import numpy as np
import pytest

from vidplan_server.data.schema import CAMERA_NAMES, STEP_FIELDS, SchemaError


def test_steps_follow_droid_names(short_episodes):
    ep = short_episodes[0]
    steps = list(ep.steps())
    assert len(steps) == len(ep)
    assert set(steps[0]) == set(STEP_FIELDS)
    assert steps[0]["is_first"] and not steps[0]["is_last"] and steps[-1]["is_last"]
    assert steps[0]["observation/wrist_image_left"].shape == (64, 64, 3)
    assert steps[0]["action"].shape == (7,)


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda e: setattr(e, "cartesian_position", e.cartesian_position[:, :5]), "observation/cartesian_position"),
        (lambda e: e.joint_position.__setitem__((0, 0), np.nan), "observation/joint_position"),
        (lambda e: e.action.__setitem__((1, 6), 1.5), "action"),
        (lambda e: setattr(e, "language_instruction", "  "), "language_instruction"),
        (lambda e: e.images.pop(CAMERA_NAMES[2]), "observation/wrist_image_left"),
        (lambda e: e.is_first.__setitem__(3, True), "is_first"),
    ],
)
def test_validate_names_the_bad_field(short_episodes, mutate, field):
    import copy

    ep = copy.deepcopy(short_episodes[0])
    mutate(ep)
    with pytest.raises(SchemaError, match=field):
        ep.validate()
