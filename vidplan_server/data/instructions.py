"""Instructions rewritten to name another object of the same scene (the planning-signal diagnostic's "distractor
named" case, and the progress head's training targets for objects other than the episode's target)."""

from __future__ import annotations

import re


def distractor_instruction(instruction: str, names: list[str], target: int, distractor: int) -> str | None:
    """The instruction with the target's description replaced by the distractor's, or None if it does not
    name the target."""
    pattern = r"\b" + re.escape(names[target]) + r"\b"
    if not re.search(pattern, instruction):
        return None
    return re.sub(pattern, names[distractor], instruction, count=1)
