"""Golden regression: EDM preconditioning and a Heun sample, 1/2/4-step flow-map samples and the heads' outputs of
the bundled checkpoint on fixed inputs (tests/artifacts/golden; regenerate on purpose with
`python scripts/make_golden.py`)."""

from __future__ import annotations

import pytest

from tests import golden_cases as golden


@pytest.fixture(scope="module")
def world():
    return golden.load_models("edm")


@pytest.mark.parametrize("case", ["edm", "flow_map"])
def test_world_model_numerics_match_the_golden_artifacts(world, case):
    inputs, expected = golden.load(case)
    bad = golden.mismatches(golden.compute(case, inputs, world), expected)
    assert not bad, golden.failure_message(case, bad)


def test_heads_match_the_golden_artifacts():
    inputs, expected = golden.load("heads")
    bad = golden.mismatches(golden.compute("heads", inputs, golden.load_models("heads")), expected)
    assert not bad, golden.failure_message("heads", bad)


def test_a_changed_number_fails_with_the_regeneration_command():
    inputs, expected = golden.load("edm")
    changed = dict(expected, c_skip=expected["c_skip"] * (1 + 1e-3))
    bad = golden.mismatches(changed, expected)
    assert bad and bad[0].startswith("c_skip: max abs difference")
    assert golden.REGENERATE in golden.failure_message("edm", bad)
    assert golden.mismatches(dict(expected), expected) == []
