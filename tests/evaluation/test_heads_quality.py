"""`vidplan eval calibration` and `vidplan eval reward` on the tiny bundle: files, keys, sane values."""

import json
import math

import cv2

from vidplan_server.cli import main


def test_eval_calibration_writes_json_and_reliability_pngs(tmp_path, tiny_heads_bundle, tiny_dataset, capsys):
    out = tmp_path / "cal"
    code = main(
        [
            "eval",
            "calibration",
            "--ckpt",
            str(tiny_heads_bundle),
            "--data",
            str(tiny_dataset),
            "--ood",
            str(tiny_dataset),
            "--out",
            str(out),
            "--windows",
            "4",
            "--quiet",
        ]
    )
    assert code == 0
    result = json.loads((out / "calibration.json").read_text())
    for split in ("val", "ood"):
        r = result[split]
        assert set(r) >= {"ece", "mce", "kendall_tau", "kendall_p", "pearson_r", "mean_entropy"}
        assert 0.0 <= r["ece"] <= r["mce"] <= 1.0
        assert 0.0 <= r["mean_entropy"] <= 1.0 and -1.0 <= r["kendall_tau"] <= 1.0
        assert (out / f"reliability_{split}.png").stat().st_size > 1000
        panel = cv2.imread(str(out / f"heatmaps_{split}.png"))
        assert panel.shape == (5 * 66, 5 * 3 * 66, 3)  # 5 rows x (H=5 frames x 3 views), 2-px gaps
        events = result["splits"][split]["events"]
        assert set(events) == {"p_le_0.1", "p_le_0.25", "p_le_0.5", "p_le_1", "top_bin"}
        assert r["ece"] == max(e["ece"] for e in events.values())
    # the same data and seed give the same numbers for both splits
    assert result["val"] == result["ood"]
    assert "ECE" in capsys.readouterr().out


def test_eval_reward_writes_the_named_metrics(tmp_path, tiny_heads_bundle, tiny_dataset, capsys):
    out = tmp_path / "rew"
    code = main(
        [
            "eval",
            "reward",
            "--ckpt",
            str(tiny_heads_bundle),
            "--data",
            str(tiny_dataset),
            "--ood",
            str(tiny_dataset),
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    result = json.loads((out / "reward.json").read_text())
    ood = json.loads((out / "reward_ood.json").read_text())
    assert ood["semantic"] == result["semantic"]  # the same episodes as --ood: the same figures
    assert set(result["semantic"]["decoded_per_view"]) == {
        "exterior_image_1_left",
        "exterior_image_2_left",
        "wrist_image_left",
    }
    assert "ood:" in capsys.readouterr().out
    assert {"value_kendall_tau", "success_auroc", "centroid_hit_rate"} <= set(result)
    assert 0.0 <= result["centroid_hit_rate"] <= 1.0
    assert result["semantic"]["visible_frames"] > 0
    tau = result["value_kendall_tau"]
    assert math.isnan(tau) or -1.0 <= tau <= 1.0


def test_eval_reports_missing_data_and_heads(tmp_path, tiny_bundle, tiny_dataset, capsys):
    assert main(["eval", "calibration", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "--data" in capsys.readouterr().err
    assert (
        main(
            [
                "eval",
                "calibration",
                "--ckpt",
                str(tiny_bundle),
                "--data",
                str(tiny_dataset),
                "--out",
                str(tmp_path / "o"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "no module 'uq'" in capsys.readouterr().err
