"""Which proposal wins: the best score, unless it does not beat the robot's own chunk by more than the noise.

Decided (``PlannerConfig.keep_margin``): when the first proposal is the robot's own chunk -- the policy's first
sample (kind ``policy:0``, the very chunk the policy alone would execute with this seed), the request's nominal
(kind ``nominal``), or the goal policy's first sample when every policy slot is a goal sample or
``PlannerConfig.goal_first`` puts the goal samples first (kind ``goal:0``, the chunk the ``goal-policy`` agent would
execute) -- the planner keeps it unless the best proposal's score exceeds its
score by more than ``margin``. The other proposals are alternatives that must earn the switch: a difference the
world model cannot resolve is no reason to leave the policy's choice.

Measured on the bundled checkpoint (``python benchmarks/score_noise.py --out outputs/bench/score_noise.json``: the
12 policy samples at the states of 6 ``val`` / 6 ``ood`` expert-driven scenes, every 8th step, 75 / 77 states, each
rolled out under 4 shared noise draws): the paired difference ``s_i - s_0`` of one proposal against the policy's
own sample varies by 0.0006 / 0.0012 (std over draws) while the samples' draw-averaged scores spread by
0.0004 / 0.0006 (std), and another draw keeps the winner only 29 % / 23 % of the time (chance 8 %). Among samples
of one policy the argmax is mostly the noise. The margin 0.004 is 3-7x that std: with it the planner leaves the
policy's sample at 5 % / 8 % of the states, and at the approach states where it did, the hand ended 1.8 / 2.5 cm
closer to the object (4 / 3 such states); the plain argmax left it at 84 % / 94 % and gained 0.5 cm.
With the basis or a nominal's perturbations in the mix, proposals differ by
decimetres and their gaps (0.01-0.1) clear it.

Decided 0.01 since the score has the target locator's progress term (``objective.py``; the figures above are from
before it): the same benchmark (``python benchmarks/score_noise.py --out outputs/bench/score_noise_locator.json
--margins 0,0.004,0.01,0.02``) gives a paired noise of 0.005 / 0.008 and a spread of 0.010 / 0.018 (the term is in
metres, and the uncertainty weight multiplies it), a redraw keeps the winner 79 % / 74 % of the time; leaving the
policy's sample at 95 % / 92 %, 55 % / 66 %, 40 % / 51 % and 29 % / 31 % of the states for margins 0, 0.004, 0.01
and 0.02, the hand ending 1.0 / 0.5, 1.5 / 0.9, 1.9 / 1.1 and 1.7 / 1.2 cm closer where it did: 0.01 moved it
closest on both splits, about 1.5 times the paired noise.

The margin is in the score's own units, so it means less when the score's scale changes: without the uncertainty
weight (``weighting`` "none", the ``vidplan-no-uq`` agent) scores and their noise are several times larger. And the
states the planner meets in the closed loop are not the expert's: there the default planner left the policy's sample
in 19-22 % of its plans and the no-UQ one in 44-46 % (the closed-loop benchmark, 50 episodes per split), not in
5-8 %; the plain argmax kept it in only 8-9 %. In that benchmark the margin took VidPlan from 34 % to 46 % on
``val`` (the policy 50 %) and from 14 % to 16 % on ``ood`` (the policy 14 %).
``PlannerConfig.keep_draws`` D > 0 adds a scale-free check (:func:`confirmed`): the incumbent and the challenger are
rolled out again under D other shared draws (2 D rows in one batch) and the challenger must win every one by more
than the margin. Off by default until a closed-loop run says what it is worth: on the first 10 episodes per split
(``--seed 1000``) with D = 3 the planner kept the policy's sample in 98-99 % of its plans and succeeded 2/10 on
``val`` and 1/10 on ``ood`` (the policy 4/10 and 0/10), and the no-UQ planner kept it in 89-94 % and succeeded 4/10
and 1/10 (0/10 and 0/10 without the check): the check makes the two ablations comparable, and 10 episodes cannot
rank it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Proposal kinds that are the robot's own chunk: the first policy sample, the request's nominal, and the goal
#: policy's first sample when the proposals start with it (``goal_samples`` = ``policy_samples``).
INCUMBENT_KINDS = ("policy:0", "nominal", "goal:0")


@dataclass(frozen=True)
class Selection:
    winner: int  # index into the proposals
    best: int  # the argmax of the scores (== winner unless the incumbent was kept)
    kept: bool  # whether the incumbent was kept over a better-scored proposal

    def note(self, scores: np.ndarray, kinds: list[str], margin: float) -> str | None:
        if not self.kept:
            return None
        gap = float(scores[self.best] - scores[self.winner])
        return (
            f"kept {kinds[self.winner]}: the best proposal ({kinds[self.best]}) beat it by {gap:.4f}, "
            f"within the margin {margin:g}"
        )


def confirmed(gaps: np.ndarray, margin: float) -> bool:
    """Whether a challenger's score gaps over the incumbent under redrawn noise (D,) all exceed ``margin``: a sign
    test that needs no estimate of the score's scale (under no real difference, D independent redraws all favour
    the challenger with probability 2**-D)."""
    gaps = np.asarray(gaps, dtype=np.float64)
    return bool(gaps.size > 0 and np.all(gaps > margin))


def select(scores: np.ndarray, kinds: list[str], margin: float) -> Selection:
    """The winner among proposals with selection ``scores`` (N,) and ``kinds`` (N,): the argmax, except that an
    incumbent at index 0 (:data:`INCUMBENT_KINDS`) is kept unless the argmax beats it by more than ``margin``
    (>= 0; 0 is the plain argmax)."""
    scores = np.asarray(scores, dtype=np.float64)
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    best = int(np.argmax(scores))
    if best != 0 and kinds and kinds[0] in INCUMBENT_KINDS and scores[best] - scores[0] <= margin:
        return Selection(0, best, True)
    return Selection(best, best, False)
