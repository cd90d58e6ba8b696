"""The global proposer: N candidate action chunks at the control rate, each feasible by construction.

Two schemes (paper Section 3.4):

- **Jacobian basis.** The six canonical spatial velocities of the TCP in the base frame (+-x, +-y, +-z at
  ``speed_m_s``, no rotation) are mapped to joint velocities with the Panda's geometric Jacobian by damped
  least squares, ``qdot = J^T (J J^T + lambda^2 I)^-1 xi``, re-evaluated at every control step (closed loop
  on the current configuration; the angular part of ``xi`` feeds back the orientation drift so the tool
  keeps its orientation), integrated through the action adapter (velocity and joint limits), and mapped to
  ``cartesian_position`` actions by forward kinematics. A step whose pose would leave the workspace box
  holds the previous configuration instead: the proposal stops at the wall.
- **Policy samples.** When the bundle holds a policy (:mod:`vidplan_server.models.policy`) and the request
  carries no nominal chunk, the planner samples K chunks from it (different noise, so different modes) and
  passes them here: each, and ``policy_perturbations`` ramp perturbations spread over them, made feasible
  like a nominal chunk.
- **Pulled policy samples** (``pulls``, off by default; needs a located target ``goal``, the bundle's locator). The
  first ``pulls`` samples again, their positions bent toward the instructed object by the same ramp as a
  perturbation, with the end offset ``goal - end`` in the table plane, at most ``pull_max_m`` long. They keep the
  sample's height, orientation and gripper, so the policy still decides when to descend and close. Decided: only
  while the hand is farther than ``pull_min_m`` from the goal in the table plane. The locator's error (~7 cm) is
  about the objects' spacing, so it is trusted for the direction, not for the final centimetres, where the policy's
  own samples compete alone. Why: in the closed loop most failures are the hand never coming within 5 cm of the
  instructed object, so no sample goes for it and selection cannot fix that. Measured:
  on the first 28 ``ood`` benchmark seeds, 12 samples + 6 pulls succeeded in 0 against 8 without. The pulls
  were chosen in 7 % of plans and brought the hand closer (median closest approach 4.4 cm against 7.2 cm, wrong
  objects 2 against 6), but 11 episodes then closed near the object and missed it (2 without): the policy grasps
  well only at the end of its own approach. So it stays off by default.
- **Goal samples** (``goal_chunks``, labelled ``goal:j``): chunks of the goal policy, which reads the semantic
  encoder's map of the instruction (:mod:`~vidplan_server.planning.policy_samples`), after the policy samples and
  made feasible the same way.
- **Nominal.** When the robot's own policy sends a chunk, it and K perturbations of it. Decided: a
  perturbation adds a ramp ``(s + 1) / S * eps`` to positions, orientation (as a rotation vector) and
  gripper, with ``eps ~ N(0, diag(sigma^2))`` drawn once per proposal: it bends the chunk's direction
  (what matters over one second) without making it jerky, leaves the first step near the current pose, and
  its end offset has exactly the configured standard deviation. A ``joint_velocity`` nominal chunk goes
  through the same adapter as the basis proposals.

Which proposals fill N: the policy samples and their perturbations, or the nominal and its perturbations,
first (when given), then the basis bank in the
order (gripper kept, speed 1x), (gripper toggled, 1x), (kept, 0.5x), (toggled, 0.5x), (kept, 2x),
(toggled, 2x), six directions each. "Toggled" opens a closed gripper and closes an open one (threshold 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from vidplan_server.planning.adapter import ActionAdapter
from vidplan_server.planning.limits import check_chunk
from vidplan_server.planning.types import PlanningError, UnsafePlanError

DIRECTIONS = {"+x": (1, 0, 0), "-x": (-1, 0, 0), "+y": (0, 1, 0), "-y": (0, -1, 0), "+z": (0, 0, 1), "-z": (0, 0, -1)}
BASIS_VARIANTS = (("keep", 1.0), ("toggle", 1.0), ("keep", 0.5), ("toggle", 0.5), ("keep", 2.0), ("toggle", 2.0))


@dataclass(frozen=True)
class ProposerConfig:
    speed_m_s: float = 0.15  # basis translation speed (1x); 2x must stay under 0.075 m per 15 Hz step
    damping: float = 0.05  # lambda of the damped least-squares Jacobian inverse
    orientation_gain: float = 0.5  # fraction of the orientation drift corrected per step
    nominal_perturbations: int = 5  # K
    perturb_std_m: float = 0.03  # std of the end-of-chunk position offset of a perturbation
    perturb_std_rad: float = 0.05  # std of its orientation offset (rotation vector)
    perturb_std_gripper: float = 0.1
    pull_max_m: float = 0.1  # longest end offset of a pulled policy sample toward the located target
    pull_min_m: float = 0.1  # no pulls once the hand is this close to the target in the table plane

    def __post_init__(self) -> None:
        if not 0 < self.speed_m_s:
            raise ValueError(f"speed_m_s must be positive, got {self.speed_m_s}")
        if not (self.pull_max_m >= 0 and self.pull_min_m >= 0):
            raise ValueError(f"pull_max_m and pull_min_m must be >= 0, got {self.pull_max_m}, {self.pull_min_m}")
        if self.nominal_perturbations < 0:
            raise ValueError("nominal_perturbations must be >= 0")


@dataclass
class Proposals:
    actions: np.ndarray  # (N, S, 7) control-rate pose targets + gripper
    joints: np.ndarray  # (N, S, 7) rad, the configuration reaching each target
    kinds: list[str]  # (N,)

    def __len__(self) -> int:
        return len(self.kinds)


class Proposer:
    def __init__(self, adapter: ActionAdapter, config: ProposerConfig = ProposerConfig()) -> None:
        self.adapter = adapter
        self.kin = adapter.kin
        self.config = config
        max_speed = max(s for _, s in BASIS_VARIANTS) * config.speed_m_s * adapter.config.dt_s
        if max_speed > adapter.limits.max_translation_per_step_m:
            raise ValueError(f"speed_m_s {config.speed_m_s} x 2 exceeds the per-step translation limit")

    # ---------------------------------------------------------------------------------------- basis
    def basis_joints(self, q0: np.ndarray, direction: np.ndarray, speed_m_s: float, steps: int) -> np.ndarray:
        """Joint positions (steps, 7) of a constant TCP velocity ``speed_m_s * direction`` from q0."""
        dt = self.adapter.config.dt_s
        lam2 = self.config.damping**2
        R0 = self.kin.fk(q0)[:3, :3]
        q = np.asarray(q0, dtype=np.float64)
        out = np.empty((steps, 7))
        for s in range(steps):
            T = self.kin.fk(q)
            drift = Rotation.from_matrix(R0 @ T[:3, :3].T).as_rotvec()  # base-frame rotation back to R0
            xi = np.concatenate([speed_m_s * direction, self.config.orientation_gain * drift / dt])
            J = self.kin.jacobian(q)
            qdot = J.T @ np.linalg.solve(J @ J.T + lam2 * np.eye(6), xi)
            q_next = self.adapter.step_joints(q, qdot)
            if self.adapter.in_box(self.kin.fk(q_next)[:3, 3]):
                q = q_next
            out[s] = q
        return out

    def basis(self, q0: np.ndarray, gripper: float, steps: int, count: int) -> Proposals:
        """The first ``count`` proposals of the basis bank."""
        bank = [(v, d) for v in BASIS_VARIANTS for d in DIRECTIONS]
        if count > len(bank):
            raise PlanningError(f"num_proposals: at most {len(bank)} basis proposals (+ nominal ones), got {count}")
        trajectories: dict[tuple[str, float], np.ndarray] = {}
        actions, joints, kinds = [], [], []
        for (grip_mode, scale), name in bank[:count]:
            key = (name, scale)
            if key not in trajectories:
                q = self.basis_joints(
                    q0, np.asarray(DIRECTIONS[name], dtype=np.float64), scale * self.config.speed_m_s, steps
                )
                trajectories[key] = q
            q = trajectories[key]
            g = gripper if grip_mode == "keep" else (0.0 if gripper >= 0.5 else 1.0)
            actions.append(self.adapter.joints_to_actions(q, np.full(steps, g)))
            joints.append(q)
            label = f"basis:{name}" + ("" if grip_mode == "keep" else ("/open" if g == 0.0 else "/close"))
            kinds.append(label + ("" if scale == 1.0 else f"@{scale:g}x"))
        return Proposals(np.stack(actions), np.stack(joints), kinds)

    # -------------------------------------------------------------------------------------- nominal
    def nominal_targets(self, nominal: np.ndarray, space: str, q0: np.ndarray, steps: int) -> np.ndarray:
        """A nominal chunk in either action space -> cartesian targets + gripper (steps, 7)."""
        nominal = np.asarray(nominal, dtype=np.float64)
        width = {"cartesian_position": 7, "joint_velocity": 8}.get(space)
        if width is None:
            raise PlanningError(f"nominal_space must be 'cartesian_position' or 'joint_velocity', got {space!r}")
        if nominal.ndim != 2 or nominal.shape[1] != width or len(nominal) == 0:
            raise PlanningError(f"nominal: a {space} chunk must have shape (S, {width}), got {nominal.shape}")
        if not np.isfinite(nominal).all():
            raise PlanningError("nominal: chunk has NaN or infinite values")
        # A shorter chunk holds its last step; a longer one is cut to the planning horizon.
        nominal = nominal[np.minimum(np.arange(steps), len(nominal) - 1)]
        if space == "cartesian_position":
            return nominal
        qdot = self.adapter.droid_joint_velocity_to_rad_s(nominal[:, :7])
        joints = self.adapter.integrate_joint_velocities(q0, qdot)
        return self.adapter.joints_to_actions(joints, nominal[:, 7])

    def perturb(self, targets: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
        """``count`` ramp perturbations (count, S, 7) of targets (S, 7); see the module docstring."""
        S = len(targets)
        c = self.config
        eps = rng.standard_normal((count, 7)) * np.array(
            [c.perturb_std_m] * 3 + [c.perturb_std_rad] * 3 + [c.perturb_std_gripper]
        )
        ramp = (np.arange(S) + 1.0) / S
        out = np.repeat(targets[None], count, 0)
        out[..., :3] += ramp[None, :, None] * eps[:, None, :3]
        out[..., 6] += ramp[None, :] * eps[:, None, 6]
        for k in range(count):
            rot = Rotation.from_rotvec(ramp[:, None] * eps[k, 3:6][None])
            out[k, :, 3:6] = (rot * Rotation.from_euler("xyz", targets[:, 3:6])).as_euler("xyz")
        return out

    def pull(self, targets: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """targets (S, 7) bent toward goal (3,) in the table plane by a ramp whose end offset is ``goal - end``
        (x, y), at most ``pull_max_m`` long; height, orientation and gripper kept (module docstring)."""
        offset = goal[:2] - targets[-1, :2]
        length = float(np.linalg.norm(offset))
        if length > self.config.pull_max_m:
            offset = offset * (self.config.pull_max_m / length)
        ramp = (np.arange(len(targets)) + 1.0) / len(targets)
        out = targets.copy()
        out[:, :2] += ramp[:, None] * offset[None]
        return out

    # ---------------------------------------------------------------------------------------- all
    def propose(
        self,
        q0: np.ndarray,
        pose0: np.ndarray,
        gripper: float,
        steps: int,
        count: int,
        rng: np.random.Generator,
        nominal: np.ndarray | None = None,
        nominal_space: str = "cartesian_position",
        perturbations: int | None = None,
        policy: np.ndarray | None = None,
        policy_perturbations: int = 0,
        goal: np.ndarray | None = None,
        pulls: int = 0,
        goal_chunks: np.ndarray | None = None,
        goal_first: bool = False,
    ) -> Proposals:
        """``count`` feasible proposals of ``steps`` control steps from the current state. ``policy`` (K, steps, 7):
        chunks sampled from the robot's policy (cartesian targets + gripper), used first, then ``goal_chunks``
        (G, steps, 7), the goal policy's; ``goal`` (3,) m, base frame: the located instructed object,
        which ``pulls`` of the policy samples are bent toward (module docstring). ``goal_first``: the goal chunks
        come before the policy's (goal:0 is then the proposal at index 0, the incumbent of ``selection.py``)."""
        if count < 1:
            raise PlanningError(f"num_proposals must be >= 1, got {count}")
        parts: list[Proposals] = []

        def add_goal() -> None:
            room = count - sum(len(p) for p in parts)
            if goal_chunks is not None and len(goal_chunks) and room > 0:
                acts, qs = zip(
                    *(self.adapter.feasible_cartesian(t, pose0, q0) for t in goal_chunks[:room]), strict=True
                )
                parts.append(Proposals(np.stack(acts), np.stack(qs), [f"goal:{j}" for j in range(len(acts))]))

        if goal_first:
            add_goal()
        if policy is not None and len(policy):
            room = count - sum(len(p) for p in parts)
            if room > 0:
                parts.append(self._policy_part(policy, room, pose0, q0, rng, policy_perturbations, goal, pulls))
        if not goal_first:
            add_goal()
        room = count - sum(len(p) for p in parts)
        if nominal is not None and room > 0:
            K = self.config.nominal_perturbations if perturbations is None else perturbations
            if K < 0:
                raise PlanningError(f"nominal_perturbations must be >= 0, got {K}")
            K = min(K, room - 1)
            targets = self.nominal_targets(nominal, nominal_space, q0, steps)
            all_targets = np.concatenate([targets[None], self.perturb(targets, K, rng)]) if K else targets[None]
            acts, qs = zip(*(self.adapter.feasible_cartesian(t, pose0, q0) for t in all_targets), strict=True)
            parts.append(Proposals(np.stack(acts), np.stack(qs), ["nominal"] + [f"nominal~{k + 1}" for k in range(K)]))
        remaining = count - sum(len(p) for p in parts)
        if remaining > 0:
            parts.append(self.basis(q0, gripper, steps, remaining))
        props = Proposals(
            np.concatenate([p.actions for p in parts]),
            np.concatenate([p.joints for p in parts]),
            [k for p in parts for k in p.kinds],
        )
        return self._keep_feasible(props, pose0)

    def _policy_part(
        self,
        samples: np.ndarray,
        count: int,
        pose0: np.ndarray,
        q0: np.ndarray,
        rng: np.random.Generator,
        perturbations: int,
        goal: np.ndarray | None = None,
        pulls: int = 0,
    ) -> Proposals:
        """The policy samples, then ``perturbations`` perturbed copies (sample i % K for the i-th), then ``pulls``
        pulled ones (samples 0.. toward ``goal``, while the hand is far from it), within count."""
        K = min(len(samples), count)
        P = max(0, min(perturbations, count - K))
        targets = [np.asarray(a, dtype=np.float64) for a in samples[:K]]
        kinds = [f"policy:{k}" for k in range(K)]
        for i in range(P):
            targets.append(self.perturb(targets[i % K], 1, rng)[0])
            kinds.append(f"policy:{i % K}~{i // K + 1}")
        if goal is not None and np.linalg.norm(np.asarray(goal)[:2] - pose0[:2]) > self.config.pull_min_m:
            for i in range(max(0, min(pulls, count - K - P, K))):
                targets.append(self.pull(targets[i], np.asarray(goal, dtype=np.float64)))
                kinds.append(f"policy:{i}>goal")
        acts, qs = zip(*(self.adapter.feasible_cartesian(t, pose0, q0) for t in targets), strict=True)
        return Proposals(np.stack(acts), np.stack(qs), kinds)

    def _keep_feasible(self, props: Proposals, pose0: np.ndarray) -> Proposals:
        """Drop a proposal that still violates a limit (e.g. IK could not follow a nominal chunk)."""
        lim = self.adapter.limits
        ok = [not check_chunk(a, pose0, lim, q) for a, q in zip(props.actions, props.joints, strict=True)]
        if all(ok):
            return props
        if not any(ok):
            problems = check_chunk(props.actions[0], pose0, self.adapter.limits, props.joints[0])
            raise UnsafePlanError(["no feasible proposal from the current state: " + "; ".join(problems)])
        idx = np.nonzero(ok)[0]
        return Proposals(props.actions[idx], props.joints[idx], [props.kinds[i] for i in idx])
