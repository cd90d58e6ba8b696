"""``vidplan eval calibration --methods ...``: the comparison on a tiny bundle, and its errors."""

from __future__ import annotations

import json

import pytest

from tests.uq_fixtures import probe_bundle_fixture  # noqa: F401 - the fixture probe_bundle
from vidplan_server.cli import main
from vidplan_server.evaluation.uq_compare import parse_methods


def test_the_comparison_command_writes_one_table_one_figure_and_every_metric(probe_bundle, tiny_dataset, tmp_path):
    out = tmp_path / "cmp"
    args = ["eval", "calibration", "--ckpt", str(probe_bundle), "--data", str(tiny_dataset), "--ood"]
    args += [str(tiny_dataset), "--out", str(out), "--windows", "4", "--quiet"]
    assert main([*args, "--methods", "bins,c3-fsc,c3-cs,squbed"]) == 0
    result = json.loads((out / "uq_compare.json").read_text())
    assert set(result["splits"]) == {"val", "ood"}
    for split in result["splits"].values():
        for name in ("bins", "c3-fsc", "c3-cs", "squbed"):
            m = split["methods"][name]
            for key in ("ece", "mce", "brier", "frame_kendall_tau", "frame_pearson_r", "auroc_above_median"):
                assert key in m, (name, key)
            assert 0 <= m["ece"] <= m["mce"] <= 1 and 0 <= m["brier"] <= 1
        assert set(split["methods"]["c3-fsc"]["events"]) == {"p_le_0.25"}  # FSC: its one eps
        assert set(split["methods"]["c3-cs"]["events"]) == {f"p_le_{e:g}" for e in (0.1, 0.25, 0.5, 1.0)}
        assert set(split["methods"]["squbed"]["events"]) == {"frame_le_tau"}
        assert "element_kendall_tau" in split["methods"]["bins"] and "mean_epistemic" in split["methods"]["squbed"]
    for name in ("bins", "c3-fsc", "c3-cs", "squbed"):
        assert result["methods"][name]["ood_val_ratio"] == pytest.approx(1.0)  # the same data twice
        assert result["methods"][name]["cost_ms"] > 0
    table = (out / "uq_compare.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 1 + 8 and "ms / plan" in table  # header, rule, 4 methods x 2 splits
    assert (out / "reliability_all.png").stat().st_size > 0 and (out / "uq_heatmaps_val.png").is_file()


def test_unknown_or_untrained_methods_are_named(tiny_heads_bundle, tiny_dataset, tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown method"):
        parse_methods("bins,mc-dropout")
    base = ["eval", "calibration", "--ckpt", str(tiny_heads_bundle), "--data", str(tiny_dataset)]
    base += ["--out", str(tmp_path), "--windows", "2", "--quiet", "--methods"]
    assert main([*base, "bins,xyz"]) == 2
    assert "--methods bins,xyz: unknown method(s) xyz" in capsys.readouterr().err
    assert main([*base, "bins,c3-cs"]) == 2
    assert "module 'c3_cs'; train it with `vidplan train c3 --method cs" in capsys.readouterr().err
