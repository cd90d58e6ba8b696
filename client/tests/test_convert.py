"""numpy -> wire -> numpy round trips and the checks that reject malformed input."""

from __future__ import annotations

import numpy as np
import pytest
from fakes import FakeEnv, canned_response
from vidplan_client.convert import (
    CAMERA_NAMES,
    UQ_METHODS,
    PlanFailed,
    WireError,
    decode_image,
    encode_image,
    make_observation,
    make_request,
    make_state,
    plan_options,
    request_arrays,
    response_to_plan,
)
from vidplan_client.wire import vidplan_pb2 as pb

JOINTS = [0.0, -0.5, 0.0, -2.0, 0.0, 1.5, 0.8]
POSE = [0.5, 0.0, 0.3, np.pi, 0.0, 0.1]


def smooth_image(h=48, w=64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], axis=-1).astype(np.uint8)


def test_jpeg_round_trip_keeps_size_and_colour_order():
    rgb = smooth_image()
    rgb[:8, :8] = (255, 0, 0)  # a red corner: a BGR/RGB mix-up would make it blue
    frame = encode_image(rgb, "wrist_image_left", "jpeg", jpeg_quality=95)
    assert frame.encoding == pb.IMAGE_ENCODING_JPEG and (frame.width, frame.height) == (64, 48)
    assert frame.data[:2] == b"\xff\xd8"  # JPEG magic
    back = decode_image(pb.CameraFrame.FromString(frame.SerializeToString()))
    assert back.shape == rgb.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - rgb.astype(int)).mean() < 3
    assert back[2, 2, 0] > 200 and back[2, 2, 2] < 60


@pytest.mark.parametrize("encoding", ["png", "raw"])
def test_lossless_encodings_round_trip_exactly(encoding):
    rgb = np.random.default_rng(1).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    assert np.array_equal(decode_image(encode_image(rgb, "exterior_image_1_left", encoding)), rgb)


def test_decode_rejects_a_frame_whose_declared_size_lies():
    frame = encode_image(smooth_image(), "exterior_image_1_left", "png")
    frame.height = 10
    with pytest.raises(WireError, match="declared"):
        decode_image(frame)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 4, 3), np.float32),
        np.zeros((4, 4), np.uint8),
        np.zeros((4, 4, 4), np.uint8),
        np.zeros((0, 4, 3), np.uint8),
    ],
)
def test_encode_rejects_non_rgb_uint8(bad):
    with pytest.raises(WireError, match="exterior_image_2_left"):
        encode_image(bad, "exterior_image_2_left")


def test_request_round_trip_through_bytes():
    images = FakeEnv().images
    state = make_state(JOINTS, POSE, 0.25)
    past = make_observation(images, state, 11.8)
    obs = make_observation(images, state, 12.0, encoding="png")
    nominal = np.arange(21, dtype=float).reshape(3, 7) / 100
    request = make_request(
        "sess",
        42,
        "put the red cube in the tray",
        obs,
        history=[past],
        nominal=nominal,
        options=plan_options(num_proposals=16, refine_iters=0, seed=7),
        reference=nominal[1:],
    )
    parsed = pb.PlanRequest.FromString(request.SerializeToString())
    arrays = request_arrays(parsed)
    assert parsed.session_id == "sess" and parsed.sequence == 42
    assert [f.camera for f in parsed.observation.frames] == list(CAMERA_NAMES)
    for name in CAMERA_NAMES:
        assert np.array_equal(arrays["images"][name], images[name])  # PNG is lossless
    np.testing.assert_allclose(arrays["joint_position"], JOINTS)
    np.testing.assert_allclose(arrays["cartesian_position"], POSE)
    assert arrays["gripper_position"] == 0.25 and arrays["timestamp_s"] == 12.0
    assert arrays["history_timestamps_s"] == [11.8]
    np.testing.assert_allclose(arrays["nominal"], nominal)
    np.testing.assert_allclose(arrays["reference"], nominal[1:])
    with pytest.raises(WireError, match=r"reference must be finite \(R, 7\)"):
        make_request("sess", 43, "pick up the cube", obs, reference=np.zeros((2, 8)))
    assert request_arrays(make_request("sess", 44, "pick up the cube", obs))["reference"] is None
    assert parsed.nominal.space == pb.ACTION_SPACE_CARTESIAN_POSITION
    # Unset options stay unset (server default); 0 is a real value, distinct from unset.
    assert parsed.options.HasField("refine_iters") and parsed.options.refine_iters == 0
    assert parsed.options.num_proposals == 16 and parsed.options.seed == 7
    assert not parsed.options.HasField("flow_steps") and not parsed.options.HasField("deadline_ms")


def test_mode_and_policy_proposals_go_into_the_options():
    options = pb.PlanOptions.FromString(
        plan_options(mode="policy", policy_samples=3, policy_perturbations=0, seed=2).SerializeToString()
    )
    assert options.mode == pb.PLAN_MODE_POLICY and options.seed == 2
    assert options.policy_samples == 3 and options.HasField("policy_perturbations")  # 0 is sent, not "default"
    plain = plan_options()
    assert plain.mode == pb.PLAN_MODE_PLAN
    assert not plain.HasField("policy_samples") and not plain.HasField("policy_perturbations")  # server's defaults
    with pytest.raises(WireError, match="mode must be one of"):
        plan_options(mode="dream")
    with pytest.raises(WireError, match="policy_samples must be >= 0"):
        plan_options(policy_samples=-1)


def test_uq_method_goes_into_the_options_unset_by_default():
    for name, enum in UQ_METHODS.items():
        sent = pb.PlanOptions.FromString(plan_options(uq_method=name).SerializeToString())
        assert sent.uq_method == enum != pb.UQ_METHOD_UNSPECIFIED
    assert [pb.UqMethod.Name(e) for e in UQ_METHODS.values()] == [
        "UQ_METHOD_BINS",
        "UQ_METHOD_C3_FSC",
        "UQ_METHOD_C3_CS",
        "UQ_METHOD_SQUBED",
    ]
    assert plan_options().uq_method == pb.UQ_METHOD_UNSPECIFIED  # the server's --uq-method
    with pytest.raises(WireError, match="uq_method must be one of bins, c3-fsc, c3-cs, squbed, got 'dropout'"):
        plan_options(uq_method="dropout")


def test_joint_velocity_nominal_needs_eight_columns():
    obs = make_observation(FakeEnv().images, make_state(JOINTS, POSE, 0.0), 0.0)
    request = make_request("s", 1, "go", obs, nominal=np.zeros((4, 8)), nominal_space="joint_velocity")
    assert request.nominal.space == pb.ACTION_SPACE_JOINT_VELOCITY and len(request.nominal.rows) == 4
    with pytest.raises(WireError, match=r"\(S, 8\)"):
        make_request("s", 1, "go", obs, nominal=np.zeros((4, 7)), nominal_space="joint_velocity")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(joint_position=JOINTS[:6], cartesian_position=POSE, gripper_position=0.0), "joint_position"),
        (dict(joint_position=JOINTS, cartesian_position=POSE[:3], gripper_position=0.0), "cartesian_position"),
        (dict(joint_position=JOINTS, cartesian_position=[np.nan] * 6, gripper_position=0.0), "cartesian_position"),
        (dict(joint_position=JOINTS, cartesian_position=POSE, gripper_position=np.inf), "gripper_position"),
    ],
)
def test_make_state_rejects_bad_vectors(kwargs, match):
    with pytest.raises(WireError, match=match):
        make_state(**kwargs)


def test_missing_camera_and_empty_instruction_are_named():
    images = dict(FakeEnv().images)
    del images["wrist_image_left"]
    with pytest.raises(WireError, match="wrist_image_left"):
        make_observation(images, make_state(JOINTS, POSE, 0.0), 0.0)
    obs = make_observation(FakeEnv().images, make_state(JOINTS, POSE, 0.0), 0.0)
    with pytest.raises(WireError, match="instruction"):
        make_request("s", 1, "  ", obs)
    with pytest.raises(WireError, match="refine_iters"):
        plan_options(refine_iters=-1)


def test_response_to_plan_reads_chunk_and_stamps():
    obs = make_observation(FakeEnv().images, make_state(JOINTS, POSE, 0.0), 50.0)
    response = canned_response(make_request("s", 3, "go", obs))
    plan = response_to_plan(pb.PlanResponse.FromString(response.SerializeToString()))
    assert plan.chunk.shape == (15, 7) and plan.sequence == 3
    np.testing.assert_allclose(plan.chunk[:, 1], np.arange(15))
    np.testing.assert_allclose(plan.step_times_s(), 50.0 + (1 + np.arange(15)) / 15.0)
    assert plan.timings_ms == {"total": 12.5} and plan.confidence == 0.75
    assert plan.joint_positions.shape == (0, 7)


def test_response_errors_raise():
    with pytest.raises(PlanFailed, match="FAILED_PRECONDITION") as info:
        response_to_plan(
            pb.PlanResponse(
                error=pb.PlanError(
                    code="FAILED_PRECONDITION", message="unsafe", violations=["steps [3] leave the workspace"]
                )
            )
        )
    assert info.value.violations == ["steps [3] leave the workspace"]
    bad = pb.PlanResponse(stamp=pb.ChunkStamp(dt_s=0.1))
    bad.chunk.add(values=[0.0] * 6)
    with pytest.raises(WireError, match="chunk"):
        response_to_plan(bad)
    with pytest.raises(WireError, match="no chunk"):
        response_to_plan(pb.PlanResponse(stamp=pb.ChunkStamp(dt_s=0.1)))


def test_a_session_id_the_server_would_refuse_is_refused_here():
    obs = make_observation({c: smooth_image() for c in CAMERA_NAMES}, make_state(JOINTS, POSE, 0.0), 1.0)
    assert make_request("r" * 128, 1, "pick", obs).session_id == "r" * 128
    for bad in ("r" * 129, "robot\n1", "röbot"):
        with pytest.raises(WireError, match="session_id must be at most 128 printable ASCII"):
            make_request(bad, 1, "pick", obs)
