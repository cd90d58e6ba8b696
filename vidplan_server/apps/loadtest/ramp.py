"""``--ramp``: whether a stage held, and the largest robot count that did (pure; the driver runs the stages).

A stage holds when every request it counted was answered with a plan (no error of any status: a refusal, a
deadline answered as ``DEADLINE_EXCEEDED`` or a timeout means a robot went without a plan) and the p99 of the
plans' latency (coordinated-omission corrected) is within the budget, the per-request deadline. The ramp stops
at the first stage that does not hold; the stages before it all held, so the count of the last of them is the
answer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    robots: int
    held: bool
    reason: str  # why it did not hold, in words; "" when it held


def judge(robots: int, p99_ms: float | None, errors: dict[str, int], budget_ms: float) -> Verdict:
    """Did a stage of ``robots`` hold? ``errors``: counts by status key; ``p99_ms``: None when no plan came back."""
    failed = sum(errors.values())
    if failed:
        top = ", ".join(f"{key} x{n}" for key, n in sorted(errors.items(), key=lambda kv: -kv[1])[:3])
        return Verdict(robots, False, f"{failed} error(s): {top}")
    if p99_ms is None:
        return Verdict(robots, False, "no plan came back")
    if p99_ms > budget_ms:
        return Verdict(robots, False, f"p99 {p99_ms:.0f} ms over the {budget_ms:.0f} ms budget")
    return Verdict(robots, True, "")


@dataclass(frozen=True)
class RampResult:
    max_robots_held: int | None  # None: not even the first stage held
    stopped_at: int | None  # robot count of the first stage that did not hold; None: every stage held
    reason: str

    def as_dict(self) -> dict:
        return {"max_robots_held": self.max_robots_held, "stopped_at": self.stopped_at, "reason": self.reason}


def ramp_result(verdicts: list[Verdict]) -> RampResult:
    """The answer of a ramp from its stages' verdicts, in the order they ran (the driver stops after a failure)."""
    held = None
    for verdict in verdicts:
        if not verdict.held:
            return RampResult(held, verdict.robots, verdict.reason)
        held = verdict.robots
    return RampResult(held, None, "every stage held; raise --robots to look further")
