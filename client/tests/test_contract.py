"""The contract module is the one owner of the DROID names and limits, and importing it is free."""

from __future__ import annotations

import subprocess
import sys

import vidplan_client
from vidplan_client import contract, droid


def test_contract_values_are_droids():
    assert contract.CAMERA_NAMES == ("exterior_image_1_left", "exterior_image_2_left", "wrist_image_left")
    assert contract.CONTROL_HZ == 15 and abs(contract.DT_S - 1 / 15) < 1e-12
    assert (contract.MAX_TRANSLATION_PER_STEP_M, contract.MAX_ROTATION_PER_STEP_RAD) == (0.075, 0.15)
    assert vidplan_client.CAMERA_NAMES is contract.CAMERA_NAMES
    assert vidplan_client.LoopConfig("x").max_translation_per_step_m == contract.MAX_TRANSLATION_PER_STEP_M


def test_importing_the_contract_pulls_in_no_grpc_or_opencv():
    code = "import sys, vidplan_client.contract; print(sorted(m for m in ('grpc', 'cv2', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_lazy_exports_are_complete():
    assert set(vidplan_client.__all__) == set(vidplan_client._EXPORTS)
    for name in vidplan_client.__all__:
        assert getattr(vidplan_client, name) is not None


def test_observation_dict_round_trips_through_read_observation():
    import numpy as np

    images = {c: np.zeros((4, 4, 3), np.uint8) for c in contract.CAMERA_NAMES}
    obs = droid.observation_dict(images, np.zeros(7), np.arange(6.0), 1.0, timestamp={"step": 3})
    frame = droid.read_observation(obs)
    assert frame.gripper_position == 1.0 and frame.cartesian_position.tolist() == list(range(6))
    assert obs[droid.TIMESTAMP_KEY] == {"step": 3}


def test_loop_config_follows_the_servers_info_and_falls_back_to_the_contract():
    from vidplan_client.robot_loop import LoopConfig
    from vidplan_client.wire import vidplan_pb2 as pb

    info = pb.InfoResponse(dt_s=0.1, history=3, frame_stride=2, limits=pb.SafetyLimits(max_translation_per_step_m=0.05))
    config = LoopConfig.for_server(info, "pick up the cube", open_loop_steps=4)
    assert (config.dt_s, config.history_frames, config.frame_stride) == (0.1, 2, 2)
    assert config.max_translation_per_step_m == 0.05
    assert config.max_rotation_per_step_rad == contract.MAX_ROTATION_PER_STEP_RAD  # unset: DROID's
    assert config.open_loop_steps == 4 and config.instruction == "pick up the cube"
    bare = LoopConfig.for_server(pb.InfoResponse(), "x")
    assert (bare.dt_s, bare.history_frames, bare.frame_stride) == (contract.DT_S, 0, 3)
