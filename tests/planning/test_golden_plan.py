"""Golden regression of the planner: a seeded Planner.plan on the bundled checkpoint (winner, proposal scores, the
returned chunk) from a stored request (tests/artifacts/golden/plan.safetensors; regenerate on purpose with
`python scripts/make_golden.py plan`)."""

from __future__ import annotations

from tests import golden_cases as golden


def test_seeded_plan_matches_the_golden_artifact():
    inputs, expected = golden.load("plan")
    actual = golden.compute("plan", inputs, golden.load_models("plan"))
    bad = golden.mismatches(actual, expected, rel=1e-4)  # three Adam steps through the flow map amplify float noise
    assert not bad, golden.failure_message("plan", bad)
