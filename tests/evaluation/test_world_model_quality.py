"""Pixel metrics and the world-model benchmark on a tiny bundle (shape of the result, not speed)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vidplan_server.evaluation.video_metrics import masked_squared_error, moving_mask, psnr, psnr_from_sse, ssim


def test_psnr_and_ssim_of_known_images():
    a = np.full((2, 16, 16, 3), 0.5)
    assert psnr(a, a) == pytest.approx(100.0)
    assert psnr(a + 0.1, a) == pytest.approx(20.0)
    assert ssim(a, a) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    noisy = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)
    assert ssim(noisy, a) < 0.5


def test_moving_mask_marks_changed_pixels_and_their_neighbours():
    last = np.zeros((8, 8, 3))
    future = last.copy()
    future[4, 4] = 1.0
    mask = moving_mask(future[None], last, threshold=0.1, dilate=1)[0]
    assert mask.sum() == 9 and mask[3:6, 3:6].all()
    sse, count = masked_squared_error(future[None], last[None], mask[None])
    assert count == 27 and sse == pytest.approx(3.0)
    assert psnr_from_sse(sse, count) == pytest.approx(10 * np.log10(9.0))


def test_benchmark_script_writes_every_method(tmp_path, tiny_bundle, tiny_dataset):
    out = tmp_path / "wm.json"
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "world_model.py"
    subprocess.run(
        [
            sys.executable,
            str(script),
            "--ckpt",
            str(tiny_bundle),
            "--data",
            str(tiny_dataset),
            "--out",
            str(out),
            "--windows",
            "3",
            "--heun-steps",
            "3",
            "--repeats",
            "1",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(out.read_text())
    assert set(result["methods"]) == {"copy_last", "diffusion", "flow_1", "flow_2", "flow_4"}
    for name, r in result["methods"].items():
        assert set(r) >= {"nfe", "ms_per_rollout", "psnr", "ssim", "psnr_moving"}, name
        assert np.isfinite(r["psnr"]) and 0 <= r["ssim"] <= 1
    assert [result["methods"][m]["nfe"] for m in ("diffusion", "flow_1", "flow_2", "flow_4")] == [5, 1, 2, 4]
    assert result["vs_diffusion"]["flow_1"]["nfe_ratio"] == 5
