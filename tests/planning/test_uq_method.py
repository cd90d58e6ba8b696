"""The planner's ``uq_method``: validated per request (naming the field), offered by the bundle's modules, and
dispatched to the method's uncertainty in the selection score."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tests.uq_fixtures import probe_bundle_fixture  # noqa: F401 - the fixture probe_bundle
from vidplan_server.planning.types import ModelInfo, OptionCounts, PlanningError, PlanOptions, PlanRequest, RobotState
from vidplan_server.planning.validation import check_request

INFO = ModelInfo("t@0", (64, 64), 2, 5, 3, OptionCounts(12, 3, 1), OptionCounts(64, 50, 16))
HOME = np.array([0.444, 0.0, 0.381, np.pi, 0.0, 0.0])


def request(**options) -> PlanRequest:
    return PlanRequest(
        "pick up the cube",
        np.zeros((2, 3, 64, 64, 3), np.uint8),
        RobotState(np.zeros(7), HOME, 0.0),
        options=PlanOptions(**options),
    )


def test_uq_method_is_checked_and_named_in_the_error():
    assert check_request(request(uq_method="bins"), INFO) == OptionCounts(12, 3, 1)
    with pytest.raises(PlanningError) as unknown:
        check_request(request(uq_method="dropout"), INFO)
    assert unknown.value.field == "options.uq_method" and "not one of bins, c3-fsc, c3-cs, squbed" in str(unknown.value)
    with pytest.raises(PlanningError) as missing:
        check_request(request(uq_method="c3-cs"), INFO)  # the bundle offers bins only
    assert missing.value.field == "options.uq_method" and "offered: bins" in str(missing.value)
    check_request(request(uq_method="c3-cs"), replace(INFO, uq_methods=("bins", "c3-cs")))


def test_the_planner_offers_and_uses_each_method(probe_bundle, short_episodes, monkeypatch):
    from vidplan_server.planning import uq_methods
    from vidplan_server.planning.offline import request_from_episode
    from vidplan_server.planning.planner import Planner, PlannerConfig

    planner = Planner.load(probe_bundle, config=PlannerConfig(num_proposals=4, refine_iters=0, policy_samples=0))
    assert planner.info().uq_methods == ("bins", "c3-cs", "c3-fsc", "squbed")
    base = request_from_episode(short_episodes[0], 12, planner.history_len, planner.frame_stride, PlanOptions())
    seen = []
    real = uq_methods.UQSources.maps

    def spy(self, method, world, pred, *args, **kw):
        out = real(self, method, world, pred, *args, **kw)
        seen.append((method, kw.get("tap") is not None))
        return out

    monkeypatch.setattr(uq_methods.UQSources, "maps", spy)
    results = {}
    for method in ("bins", "c3-cs", "squbed"):
        r = planner.plan(replace(base, options=PlanOptions(uq_method=method, seed=3)))
        results[method] = r
        assert r.uncertainty.shape == (5,) and ((r.uncertainty >= 0) & (r.uncertainty <= 1)).all()
        assert 0.0 <= r.confidence <= 1.0
    assert seen == [("c3-cs", True), ("squbed", False)]  # bins goes the old way; C3 reads the rollout's features
    assert not np.allclose(results["bins"].uncertainty, results["c3-cs"].uncertainty)
    assert all(np.isfinite(r.expected_error).all() for r in results.values())  # always the bins head's
    with pytest.raises(Exception, match="uq_method 'dropout'"):
        Planner.load(probe_bundle, config=PlannerConfig(uq_method="dropout"))
