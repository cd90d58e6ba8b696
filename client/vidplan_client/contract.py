"""The DROID contract the robot and the server share; the server imports it from here (one owner).

Plain Python (no numpy, grpc or opencv), so importing it costs nothing. The wire messages are in
:mod:`vidplan_client.wire`; the keys of DROID's ``RobotEnv`` observation dict are in :mod:`vidplan_client.droid`.
"""

from __future__ import annotations

#: DROID camera names, in the model's order (the views are stacked vertically in this order).
CAMERA_NAMES: tuple[str, ...] = ("exterior_image_1_left", "exterior_image_2_left", "wrist_image_left")

#: DROID's control rate: one ``cartesian_position`` target per period.
CONTROL_HZ = 15
DT_S = 1.0 / CONTROL_HZ

#: DROID's per-step limits (one control period): translation of the TCP in m and geodesic rotation in rad. The
#: server refuses a chunk that exceeds them; the robot loop checks every command against them too.
MAX_TRANSLATION_PER_STEP_M = 0.075
MAX_ROTATION_PER_STEP_RAD = 0.15

#: The action space the robot loop commands and the planner answers in (DROID's name).
ACTION_SPACE = "cartesian_position"
