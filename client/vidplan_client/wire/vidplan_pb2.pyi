# ruff: noqa
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImageEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_ENCODING_UNSPECIFIED: _ClassVar[ImageEncoding]
    IMAGE_ENCODING_JPEG: _ClassVar[ImageEncoding]
    IMAGE_ENCODING_PNG: _ClassVar[ImageEncoding]
    IMAGE_ENCODING_RAW_RGB: _ClassVar[ImageEncoding]

class ActionSpace(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTION_SPACE_UNSPECIFIED: _ClassVar[ActionSpace]
    ACTION_SPACE_CARTESIAN_POSITION: _ClassVar[ActionSpace]
    ACTION_SPACE_JOINT_VELOCITY: _ClassVar[ActionSpace]

class PlanMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PLAN_MODE_UNSPECIFIED: _ClassVar[PlanMode]
    PLAN_MODE_PLAN: _ClassVar[PlanMode]
    PLAN_MODE_POLICY: _ClassVar[PlanMode]

class UqMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UQ_METHOD_UNSPECIFIED: _ClassVar[UqMethod]
    UQ_METHOD_BINS: _ClassVar[UqMethod]
    UQ_METHOD_C3_FSC: _ClassVar[UqMethod]
    UQ_METHOD_C3_CS: _ClassVar[UqMethod]
    UQ_METHOD_SQUBED: _ClassVar[UqMethod]
IMAGE_ENCODING_UNSPECIFIED: ImageEncoding
IMAGE_ENCODING_JPEG: ImageEncoding
IMAGE_ENCODING_PNG: ImageEncoding
IMAGE_ENCODING_RAW_RGB: ImageEncoding
ACTION_SPACE_UNSPECIFIED: ActionSpace
ACTION_SPACE_CARTESIAN_POSITION: ActionSpace
ACTION_SPACE_JOINT_VELOCITY: ActionSpace
PLAN_MODE_UNSPECIFIED: PlanMode
PLAN_MODE_PLAN: PlanMode
PLAN_MODE_POLICY: PlanMode
UQ_METHOD_UNSPECIFIED: UqMethod
UQ_METHOD_BINS: UqMethod
UQ_METHOD_C3_FSC: UqMethod
UQ_METHOD_C3_CS: UqMethod
UQ_METHOD_SQUBED: UqMethod

class CameraFrame(_message.Message):
    __slots__ = ("camera", "encoding", "width", "height", "data")
    CAMERA_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    camera: str
    encoding: ImageEncoding
    width: int
    height: int
    data: bytes
    def __init__(self, camera: _Optional[str] = ..., encoding: _Optional[_Union[ImageEncoding, str]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class RobotState(_message.Message):
    __slots__ = ("joint_position", "cartesian_position", "gripper_position")
    JOINT_POSITION_FIELD_NUMBER: _ClassVar[int]
    CARTESIAN_POSITION_FIELD_NUMBER: _ClassVar[int]
    GRIPPER_POSITION_FIELD_NUMBER: _ClassVar[int]
    joint_position: _containers.RepeatedScalarFieldContainer[float]
    cartesian_position: _containers.RepeatedScalarFieldContainer[float]
    gripper_position: float
    def __init__(self, joint_position: _Optional[_Iterable[float]] = ..., cartesian_position: _Optional[_Iterable[float]] = ..., gripper_position: _Optional[float] = ...) -> None: ...

class Observation(_message.Message):
    __slots__ = ("timestamp_s", "frames", "state")
    TIMESTAMP_S_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    timestamp_s: float
    frames: _containers.RepeatedCompositeFieldContainer[CameraFrame]
    state: RobotState
    def __init__(self, timestamp_s: _Optional[float] = ..., frames: _Optional[_Iterable[_Union[CameraFrame, _Mapping]]] = ..., state: _Optional[_Union[RobotState, _Mapping]] = ...) -> None: ...

class ActionRow(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class NominalChunk(_message.Message):
    __slots__ = ("space", "rows")
    SPACE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    space: ActionSpace
    rows: _containers.RepeatedCompositeFieldContainer[ActionRow]
    def __init__(self, space: _Optional[_Union[ActionSpace, str]] = ..., rows: _Optional[_Iterable[_Union[ActionRow, _Mapping]]] = ...) -> None: ...

class PlanOptions(_message.Message):
    __slots__ = ("num_proposals", "refine_iters", "flow_steps", "deadline_ms", "seed", "return_heatmaps", "nominal_perturbations", "policy_samples", "policy_perturbations", "mode", "uq_method")
    NUM_PROPOSALS_FIELD_NUMBER: _ClassVar[int]
    REFINE_ITERS_FIELD_NUMBER: _ClassVar[int]
    FLOW_STEPS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    RETURN_HEATMAPS_FIELD_NUMBER: _ClassVar[int]
    NOMINAL_PERTURBATIONS_FIELD_NUMBER: _ClassVar[int]
    POLICY_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    POLICY_PERTURBATIONS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    UQ_METHOD_FIELD_NUMBER: _ClassVar[int]
    num_proposals: int
    refine_iters: int
    flow_steps: int
    deadline_ms: int
    seed: int
    return_heatmaps: bool
    nominal_perturbations: int
    policy_samples: int
    policy_perturbations: int
    mode: PlanMode
    uq_method: UqMethod
    def __init__(self, num_proposals: _Optional[int] = ..., refine_iters: _Optional[int] = ..., flow_steps: _Optional[int] = ..., deadline_ms: _Optional[int] = ..., seed: _Optional[int] = ..., return_heatmaps: _Optional[bool] = ..., nominal_perturbations: _Optional[int] = ..., policy_samples: _Optional[int] = ..., policy_perturbations: _Optional[int] = ..., mode: _Optional[_Union[PlanMode, str]] = ..., uq_method: _Optional[_Union[UqMethod, str]] = ...) -> None: ...

class PlanRequest(_message.Message):
    __slots__ = ("session_id", "sequence", "instruction", "observation", "history", "nominal", "options", "reference")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    NOMINAL_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    sequence: int
    instruction: str
    observation: Observation
    history: _containers.RepeatedCompositeFieldContainer[Observation]
    nominal: NominalChunk
    options: PlanOptions
    reference: _containers.RepeatedCompositeFieldContainer[ActionRow]
    def __init__(self, session_id: _Optional[str] = ..., sequence: _Optional[int] = ..., instruction: _Optional[str] = ..., observation: _Optional[_Union[Observation, _Mapping]] = ..., history: _Optional[_Iterable[_Union[Observation, _Mapping]]] = ..., nominal: _Optional[_Union[NominalChunk, _Mapping]] = ..., options: _Optional[_Union[PlanOptions, _Mapping]] = ..., reference: _Optional[_Iterable[_Union[ActionRow, _Mapping]]] = ...) -> None: ...

class ChunkStamp(_message.Message):
    __slots__ = ("t0_s", "i0", "dt_s")
    T0_S_FIELD_NUMBER: _ClassVar[int]
    I0_FIELD_NUMBER: _ClassVar[int]
    DT_S_FIELD_NUMBER: _ClassVar[int]
    t0_s: float
    i0: int
    dt_s: float
    def __init__(self, t0_s: _Optional[float] = ..., i0: _Optional[int] = ..., dt_s: _Optional[float] = ...) -> None: ...

class RefineStep(_message.Message):
    __slots__ = ("iteration", "objective", "value", "uncertainty")
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    UNCERTAINTY_FIELD_NUMBER: _ClassVar[int]
    iteration: int
    objective: float
    value: float
    uncertainty: float
    def __init__(self, iteration: _Optional[int] = ..., objective: _Optional[float] = ..., value: _Optional[float] = ..., uncertainty: _Optional[float] = ...) -> None: ...

class PredictedImage(_message.Message):
    __slots__ = ("frame", "image")
    FRAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    frame: int
    image: CameraFrame
    def __init__(self, frame: _Optional[int] = ..., image: _Optional[_Union[CameraFrame, _Mapping]] = ...) -> None: ...

class PlanError(_message.Message):
    __slots__ = ("code", "message", "violations")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    violations: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., violations: _Optional[_Iterable[str]] = ...) -> None: ...

class PlanResponse(_message.Message):
    __slots__ = ("session_id", "sequence", "stamp", "chunk", "joint_positions", "frame_stride", "uncertainty", "expected_error", "semantic_reward", "value", "confidence", "proposal_scores", "proposal_kinds", "winner", "refinement", "refined", "deadline_hit", "notes", "predicted_frames", "heatmaps", "model_version", "timings_ms", "error", "dropped_sequences")
    class TimingsMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    STAMP_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    JOINT_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    FRAME_STRIDE_FIELD_NUMBER: _ClassVar[int]
    UNCERTAINTY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_ERROR_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_REWARD_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_SCORES_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_KINDS_FIELD_NUMBER: _ClassVar[int]
    WINNER_FIELD_NUMBER: _ClassVar[int]
    REFINEMENT_FIELD_NUMBER: _ClassVar[int]
    REFINED_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_HIT_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_FRAMES_FIELD_NUMBER: _ClassVar[int]
    HEATMAPS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DROPPED_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    sequence: int
    stamp: ChunkStamp
    chunk: _containers.RepeatedCompositeFieldContainer[ActionRow]
    joint_positions: _containers.RepeatedCompositeFieldContainer[ActionRow]
    frame_stride: int
    uncertainty: _containers.RepeatedScalarFieldContainer[float]
    expected_error: _containers.RepeatedScalarFieldContainer[float]
    semantic_reward: _containers.RepeatedScalarFieldContainer[float]
    value: _containers.RepeatedScalarFieldContainer[float]
    confidence: float
    proposal_scores: _containers.RepeatedScalarFieldContainer[float]
    proposal_kinds: _containers.RepeatedScalarFieldContainer[str]
    winner: int
    refinement: _containers.RepeatedCompositeFieldContainer[RefineStep]
    refined: bool
    deadline_hit: bool
    notes: _containers.RepeatedScalarFieldContainer[str]
    predicted_frames: _containers.RepeatedCompositeFieldContainer[PredictedImage]
    heatmaps: _containers.RepeatedCompositeFieldContainer[PredictedImage]
    model_version: str
    timings_ms: _containers.ScalarMap[str, float]
    error: PlanError
    dropped_sequences: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, session_id: _Optional[str] = ..., sequence: _Optional[int] = ..., stamp: _Optional[_Union[ChunkStamp, _Mapping]] = ..., chunk: _Optional[_Iterable[_Union[ActionRow, _Mapping]]] = ..., joint_positions: _Optional[_Iterable[_Union[ActionRow, _Mapping]]] = ..., frame_stride: _Optional[int] = ..., uncertainty: _Optional[_Iterable[float]] = ..., expected_error: _Optional[_Iterable[float]] = ..., semantic_reward: _Optional[_Iterable[float]] = ..., value: _Optional[_Iterable[float]] = ..., confidence: _Optional[float] = ..., proposal_scores: _Optional[_Iterable[float]] = ..., proposal_kinds: _Optional[_Iterable[str]] = ..., winner: _Optional[int] = ..., refinement: _Optional[_Iterable[_Union[RefineStep, _Mapping]]] = ..., refined: _Optional[bool] = ..., deadline_hit: _Optional[bool] = ..., notes: _Optional[_Iterable[str]] = ..., predicted_frames: _Optional[_Iterable[_Union[PredictedImage, _Mapping]]] = ..., heatmaps: _Optional[_Iterable[_Union[PredictedImage, _Mapping]]] = ..., model_version: _Optional[str] = ..., timings_ms: _Optional[_Mapping[str, float]] = ..., error: _Optional[_Union[PlanError, _Mapping]] = ..., dropped_sequences: _Optional[_Iterable[int]] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SafetyLimits(_message.Message):
    __slots__ = ("workspace_min_m", "workspace_max_m", "max_translation_per_step_m", "max_rotation_per_step_rad", "joint_lower_rad", "joint_upper_rad", "gripper_min", "gripper_max")
    WORKSPACE_MIN_M_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_MAX_M_FIELD_NUMBER: _ClassVar[int]
    MAX_TRANSLATION_PER_STEP_M_FIELD_NUMBER: _ClassVar[int]
    MAX_ROTATION_PER_STEP_RAD_FIELD_NUMBER: _ClassVar[int]
    JOINT_LOWER_RAD_FIELD_NUMBER: _ClassVar[int]
    JOINT_UPPER_RAD_FIELD_NUMBER: _ClassVar[int]
    GRIPPER_MIN_FIELD_NUMBER: _ClassVar[int]
    GRIPPER_MAX_FIELD_NUMBER: _ClassVar[int]
    workspace_min_m: _containers.RepeatedScalarFieldContainer[float]
    workspace_max_m: _containers.RepeatedScalarFieldContainer[float]
    max_translation_per_step_m: float
    max_rotation_per_step_rad: float
    joint_lower_rad: _containers.RepeatedScalarFieldContainer[float]
    joint_upper_rad: _containers.RepeatedScalarFieldContainer[float]
    gripper_min: float
    gripper_max: float
    def __init__(self, workspace_min_m: _Optional[_Iterable[float]] = ..., workspace_max_m: _Optional[_Iterable[float]] = ..., max_translation_per_step_m: _Optional[float] = ..., max_rotation_per_step_rad: _Optional[float] = ..., joint_lower_rad: _Optional[_Iterable[float]] = ..., joint_upper_rad: _Optional[_Iterable[float]] = ..., gripper_min: _Optional[float] = ..., gripper_max: _Optional[float] = ...) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("model_version", "cameras", "image_height", "image_width", "history", "horizon", "frame_stride", "dt_s", "action_space", "chunk_steps", "limits", "server_version", "request_limits", "modes", "uq_methods", "default_uq_method")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CAMERAS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    HORIZON_FIELD_NUMBER: _ClassVar[int]
    FRAME_STRIDE_FIELD_NUMBER: _ClassVar[int]
    DT_S_FIELD_NUMBER: _ClassVar[int]
    ACTION_SPACE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_STEPS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_LIMITS_FIELD_NUMBER: _ClassVar[int]
    MODES_FIELD_NUMBER: _ClassVar[int]
    UQ_METHODS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_UQ_METHOD_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    cameras: _containers.RepeatedScalarFieldContainer[str]
    image_height: int
    image_width: int
    history: int
    horizon: int
    frame_stride: int
    dt_s: float
    action_space: ActionSpace
    chunk_steps: int
    limits: SafetyLimits
    server_version: str
    request_limits: RequestLimits
    modes: _containers.RepeatedScalarFieldContainer[PlanMode]
    uq_methods: _containers.RepeatedScalarFieldContainer[UqMethod]
    default_uq_method: UqMethod
    def __init__(self, model_version: _Optional[str] = ..., cameras: _Optional[_Iterable[str]] = ..., image_height: _Optional[int] = ..., image_width: _Optional[int] = ..., history: _Optional[int] = ..., horizon: _Optional[int] = ..., frame_stride: _Optional[int] = ..., dt_s: _Optional[float] = ..., action_space: _Optional[_Union[ActionSpace, str]] = ..., chunk_steps: _Optional[int] = ..., limits: _Optional[_Union[SafetyLimits, _Mapping]] = ..., server_version: _Optional[str] = ..., request_limits: _Optional[_Union[RequestLimits, _Mapping]] = ..., modes: _Optional[_Iterable[_Union[PlanMode, str]]] = ..., uq_methods: _Optional[_Iterable[_Union[UqMethod, str]]] = ..., default_uq_method: _Optional[_Union[UqMethod, str]] = ...) -> None: ...

class RequestLimits(_message.Message):
    __slots__ = ("max_history", "max_image_short_side", "max_image_long_side", "max_instruction_chars", "max_session_id_chars", "max_nominal_steps", "max_num_proposals", "max_refine_iters", "max_flow_steps", "min_deadline_ms")
    MAX_HISTORY_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_SHORT_SIDE_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_LONG_SIDE_FIELD_NUMBER: _ClassVar[int]
    MAX_INSTRUCTION_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSION_ID_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_NOMINAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_NUM_PROPOSALS_FIELD_NUMBER: _ClassVar[int]
    MAX_REFINE_ITERS_FIELD_NUMBER: _ClassVar[int]
    MAX_FLOW_STEPS_FIELD_NUMBER: _ClassVar[int]
    MIN_DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    max_history: int
    max_image_short_side: int
    max_image_long_side: int
    max_instruction_chars: int
    max_session_id_chars: int
    max_nominal_steps: int
    max_num_proposals: int
    max_refine_iters: int
    max_flow_steps: int
    min_deadline_ms: float
    def __init__(self, max_history: _Optional[int] = ..., max_image_short_side: _Optional[int] = ..., max_image_long_side: _Optional[int] = ..., max_instruction_chars: _Optional[int] = ..., max_session_id_chars: _Optional[int] = ..., max_nominal_steps: _Optional[int] = ..., max_num_proposals: _Optional[int] = ..., max_refine_iters: _Optional[int] = ..., max_flow_steps: _Optional[int] = ..., min_deadline_ms: _Optional[float] = ...) -> None: ...
