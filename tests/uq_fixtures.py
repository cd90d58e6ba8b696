"""A tiny bundle with every uncertainty method (import the fixture into a test module to use it)."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="session", name="probe_bundle")
def probe_bundle_fixture(tmp_path_factory, tiny_policy_bundle, tiny_dataset):
    """``tiny_policy_bundle`` plus C3 probes (FSC with Brier, CS-BC with BCE) and an S-QUBED map, a few steps each."""
    from vidplan_server.cli import main

    out = tmp_path_factory.mktemp("uqm") / "ckpt"
    shutil.copytree(tiny_policy_bundle, out)
    common = ["--data", str(tiny_dataset), "--out", str(out), "--quiet"]
    assert main(["train", "c3", "--method", "fsc", "--loss", "brier", "--eps", "0.25", "--steps", "3", *common]) == 0
    assert main(["train", "c3", "--method", "cs", "--steps", "3", *common]) == 0
    assert main(["train", "squbed", "--windows", "4", "--latent-prompts", "2", "--videos", "2", *common]) == 0
    return out
