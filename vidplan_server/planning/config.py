"""The planner's configuration (:class:`PlannerConfig`): proposal mix, selection, refinement, scoring and safety
settings with the defaults the closed loop decided (the measurements are in :mod:`~vidplan_server.planning.planner`
and :mod:`~vidplan_server.planning.selection`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vidplan_server.planning.adapter import AdapterConfig
from vidplan_server.planning.limits import SafetyLimits
from vidplan_server.planning.objective import ScoreConfig
from vidplan_server.planning.proposer import ProposerConfig


@dataclass(frozen=True)
class PlannerConfig:
    num_proposals: int = 12
    # Decided (closed-loop A/B in planner.py's docstring): refinement is opt-in per request or here. The bundled
    # value head does not yet rank progress on the instructed object (planning signal -0.12), and three Adam steps at
    # refine_lr move the winner's knots by ~2 cm -- a grasp's whole margin -- in whatever direction it points.
    refine_iters: int = 0
    flow_steps: int = 1  # the UQ head of the bundled checkpoint was trained on 1-step rollout errors
    refine_lr: float = 0.05  # Adam step in normalised action units ([-1, 1] spans the data's 1st-99th pct)
    max_proposals: int = 64
    max_refine_iters: int = 50
    max_flow_steps: int = 16
    autocast_bf16: bool = True  # on CUDA only
    text_cache: int = 64  # instruction embeddings kept
    # K chunks from the bundle's policy per plan (when it has one and no nominal is sent); the Jacobian basis fills
    # the rest of num_proposals. Decided: all of them by default (closed-loop A/B in planner.py's docstring).
    policy_samples: int = 12
    policy_perturbations: int = 0  # ramp perturbations of the policy samples (the samples already differ)
    # Policy samples also bent toward where the locator puts the instructed object (planning/proposer.py), within
    # num_proposals; needs a bundle with a locator. Off: measured worse in the closed loop (proposer docstring).
    policy_pulls: int = 0
    # Of the policy_samples, this many come from the bundle's goal policy (module goal_policy: it also reads the
    # semantic encoder's map of the instruction), while the gripper is open (planning/policy_samples.py); without a
    # goal_policy they stay samples of the policy. Decided: all of them, the goal policy's first sample then being
    # the incumbent (selection.py); the closed-loop A/B is in the README's benchmark section.
    goal_samples: int = 12
    # With goal samples mixed with policy samples (goal_samples < policy_samples): True puts the goal samples first,
    # so the goal policy's coherent sample is the incumbent and the policy's samples are challengers that must beat it
    # by keep_margin; False (default) keeps the policy's coherent sample as the incumbent. Off: +5 on val, -4 on ood
    # on development seeds (planning/policy_samples.py).
    goal_first: bool = False
    # With goal samples mixed with policy samples: the policy's samples are drawn only while the hand is within this
    # horizontal distance (m) of the located instructed object, all samples being the goal policy's farther away --
    # the goal policy brings the hand to the object, the policy's samples may then take over the grasp where the goal
    # policy hovers. 0 (default): mixed everywhere, as before. Off: at 0.1 m, +5 on val but -5 on ood on development
    # seeds (planning/policy_samples.py, session 19).
    mix_radius: float = 0.0
    # With goal samples mixed with policy samples: the policy's samples are drawn only when the policy knows every
    # word of the instruction (its vocabulary, the train split's words); otherwise all samples are the goal policy's
    # -- the policy cannot follow words it never learned (planning/policy_samples.py, session 20).
    mix_known_words: bool = False
    # Standard deviation of the flow noise the policy and goal-policy samples start from (trained at 1): colder
    # samples land nearer the flow's modes. Decided 0.5 in the closed loop (planning/policy_samples.py).
    policy_temperature: float = 0.5
    # With a request's reference (the unexecuted rest of the chunk the robot is running), the policy draws this many
    # samples and keeps the one that continues it (planning/policy_samples.py, backward coherence): the ``policy``
    # mode answers it, and in a plan it is the incumbent. 1: no choice. Decided 8 in the closed loop (there).
    coherence_samples: int = 8
    # The robot's own chunk (policy:0 or the nominal) is kept unless the best proposal beats its score by more than
    # this: a gap below the rollout noise is no reason to leave the policy (planning/selection.py, measured there).
    keep_margin: float = 0.01
    # Other noise draws under which a challenger must also beat the robot's own chunk (by keep_margin) before it
    # replaces it; 0: the selection's draw only. Scale-free, unlike the margin (planning/selection.py). Decided 0:
    # with 3 it kept the policy's sample in 60 % of plans (45 % at 0) and succeeded on 7 of the closed-loop
    # benchmark's 50 `ood` seeds against 11 -- leaving the policy's sample is what helps there.
    keep_draws: int = 0
    # Whether the score's progress term (the hand's distance to the located instructed object, planning/objective.py)
    # also counts while the gripper is closed (>= 0.5). Decided True, as before the option existed: leaving it out
    # while the gripper is closed was measured no better (planning/planner.py, "Decided: the progress term also counts
    # while the gripper is closed").
    progress_when_closed: bool = True
    uq_method: str = "bins"  # uncertainty weighting the selection score (planning/uq_methods.py); per request too
    proposer: ProposerConfig = field(default_factory=ProposerConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    limits: SafetyLimits = field(default_factory=SafetyLimits)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)

    def __post_init__(self) -> None:
        if not self.keep_margin >= 0:  # also refuses NaN
            raise ValueError(f"keep_margin must be >= 0, got {self.keep_margin}")
        if not 0 < self.policy_temperature <= 4:  # also refuses NaN
            raise ValueError(f"policy_temperature must be in (0, 4], got {self.policy_temperature}")
        if not 1 <= self.coherence_samples <= 64:
            raise ValueError(f"coherence_samples must be in [1, 64], got {self.coherence_samples}")
        if self.keep_draws < 0:
            raise ValueError(f"keep_draws must be >= 0, got {self.keep_draws}")
        if not 0 <= self.mix_radius <= 10:  # also refuses NaN
            raise ValueError(f"mix_radius must be in [0, 10] m, got {self.mix_radius}")
        if not 0 <= self.goal_samples <= self.max_proposals:
            raise ValueError(f"goal_samples must be in [0, {self.max_proposals}], got {self.goal_samples}")
        if not 0 <= self.policy_pulls <= self.max_proposals:
            raise ValueError(f"policy_pulls must be in [0, {self.max_proposals}], got {self.policy_pulls}")
