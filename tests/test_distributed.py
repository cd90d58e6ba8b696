"""`vidplan train` under torchrun: 2 CPU processes (gloo) on the tiny preset. The loss falls, the bundle and the
resume state have the single-process format, and a run resumes with another number of processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from safetensors import safe_open

from vidplan_server.cli import main
from vidplan_server.distributed import World, device_for, world_from_env

STEPS = 20


def _torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "vidplan_server.cli",
        *args,
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def _tensors(path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(path), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__


def test_world_from_torchrun_variables():
    assert world_from_env({}) == World(0, 1, 0) and not world_from_env({}).distributed
    world = world_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert world == World(3, 4, 1) and world.distributed
    assert device_for(World(0, 2, 1), "cpu") == "cpu"


@pytest.mark.slow
def test_two_cpu_processes_train_a_stage_in_the_single_process_format(tiny_dataset, tmp_path):
    common = ["train", "codec", "--data", str(tiny_dataset), "--preset", "tiny", "--quiet"]
    two = tmp_path / "two"
    run = _torchrun(2, *common, "--out", str(two), "--steps", str(STEPS))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    match = re.search(r"data-parallel over 2 processes: rank 0's training loss ([\d.e+-]+) -> ([\d.e+-]+)", run.stdout)
    assert match, run.stdout
    assert float(match[2]) < float(match[1])  # the loss falls
    assert run.stdout.count("trained to step") == 1  # one rank reports

    one = tmp_path / "one"
    assert main([*common, "--out", str(one), "--steps", str(STEPS)]) == 0
    # Same bundle format: the same modules and configs, the same tensors by name and shape, the same resume state.
    config_two, config_one = (json.loads((d / "config.json").read_text()) for d in (two, one))
    assert config_two["modules"].keys() == config_one["modules"].keys()
    codec_two, codec_one = (c["modules"]["codec"]["config"] for c in (config_two, config_one))
    assert codec_two.keys() == codec_one.keys()
    # The architecture is the same; only what was measured on the data (latent shift and scale) differs.
    assert {k: v for k, v in codec_two.items() if not isinstance(v, float)} == {
        k: v for k, v in codec_one.items() if not isinstance(v, float)
    }
    assert config_two["modules"]["codec"]["meta"]["processes"] == 2
    assert _tensors(two / "codec.safetensors") == _tensors(one / "codec.safetensors")
    state_two, state_one = (d / "training" / "codec" / "state.safetensors" for d in (two, one))
    assert _tensors(state_two) == _tensors(state_one)
    assert json.loads((two / "training" / "codec" / "state.json").read_text())["step"] == STEPS
    assert not [p for p in two.rglob("*") if "rank" in p.name]  # the other rank wrote nothing here

    # Resume with another number of processes: the 2-process run goes on in 1, the 1-process run in 2.
    assert main([*common, "--out", str(two), "--steps", str(STEPS + 4), "--resume"]) == 0
    assert json.loads((two / "training" / "codec" / "state.json").read_text())["step"] == STEPS + 4
    run = _torchrun(2, *common, "--out", str(one), "--steps", str(STEPS + 4), "--resume")
    assert run.returncode == 0, run.stderr[-4000:]
    assert json.loads((one / "training" / "codec" / "state.json").read_text())["step"] == STEPS + 4
