"""Checkpoint bundles: round trip, and a clear error for every way a bundle can be broken."""

import json
import shutil

import pytest
import torch

from vidplan_server.models.checkpoint import CheckpointError, read_manifest
from vidplan_server.models.world_model import WorldModel, load_denoiser


@pytest.fixture()
def bundle(tmp_path, tiny_bundle):
    out = tmp_path / "ckpt"
    shutil.copytree(tiny_bundle, out, ignore=shutil.ignore_patterns("training"))
    return out


def _edit_config(path, edit):
    manifest = json.loads((path / "config.json").read_text())
    edit(manifest)
    (path / "config.json").write_text(json.dumps(manifest))


def test_round_trip_gives_identical_predictions(bundle, tiny_bundle):
    a = WorldModel.load(tiny_bundle)
    b = WorldModel.load(bundle)
    assert set(read_manifest(bundle)["modules"]) == {"codec", "world", "flow_map"}
    frames = torch.randint(0, 255, (2, 3, 64, 64, 3), dtype=torch.uint8)
    hist = a.encode(frames).unsqueeze(0)
    assert torch.equal(hist, b.encode(frames).unsqueeze(0))
    actions = torch.zeros(1, a.horizon, 7)
    noise = torch.randn(1, a.horizon, *hist.shape[2:])
    for method, steps in (("flow", 2), ("diffusion", 3)):
        pa = a.rollout(hist, actions, method=method, steps=steps, noise=noise)
        pb = b.rollout(hist, actions, method=method, steps=steps, noise=noise)
        assert torch.equal(pa, pb)
    assert a.decode(pa).shape == (1, a.horizon, 3, 3, 64, 64)


def test_training_state_is_not_part_of_the_loaded_bundle(tiny_bundle):
    assert (tiny_bundle / "training" / "world" / "state.safetensors").is_file()
    assert all(not name.startswith("training") for name in read_manifest(tiny_bundle)["modules"])


def test_missing_folder_and_config(tmp_path, bundle):
    with pytest.raises(CheckpointError, match="does not exist"):
        WorldModel.load(tmp_path / "nope")
    (bundle / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json: missing"):
        WorldModel.load(bundle)


def test_invalid_json_and_wrong_version(bundle):
    (bundle / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        WorldModel.load(bundle)
    (bundle / "config.json").write_text(json.dumps({"format": "vidplan-checkpoint", "version": 99, "modules": {}}))
    with pytest.raises(CheckpointError, match="version 99"):
        WorldModel.load(bundle)


def test_truncated_weights_name_the_file(bundle):
    path = bundle / "world.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"world\.safetensors: cannot read weights"):
        WorldModel.load(bundle)


def test_missing_weights_file(bundle):
    (bundle / "flow_map.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"flow_map\.safetensors: weights file of module 'flow_map' is missing"):
        WorldModel.load(bundle)


def test_config_that_does_not_match_the_weights_names_the_tensor(bundle):
    _edit_config(bundle, lambda m: m["modules"]["world"]["config"]["net"].update(embed_dim=48))
    with pytest.raises(CheckpointError, match=r"tensor net\.\S+ has shape .* implies"):
        load_denoiser(bundle)


def test_config_with_different_depth_names_missing_tensors(bundle):
    _edit_config(bundle, lambda m: m["modules"]["world"]["config"]["net"].update(blocks_per_level=2))
    with pytest.raises(CheckpointError, match="missing tensor"):
        load_denoiser(bundle)


def test_unknown_and_missing_config_fields(bundle):
    _edit_config(bundle, lambda m: m["modules"]["world"]["config"]["net"].update(chanels=[1]))
    with pytest.raises(CheckpointError, match=r"modules\.world\.config\.net: unknown field\(s\) chanels"):
        load_denoiser(bundle)
    _edit_config(bundle, lambda m: m["modules"]["world"]["config"]["net"].pop("chanels"))
    _edit_config(bundle, lambda m: m["modules"]["world"]["config"].pop("actions"))
    with pytest.raises(CheckpointError, match="missing field actions"):
        load_denoiser(bundle)


def test_missing_module_lists_what_the_bundle_has(bundle):
    _edit_config(bundle, lambda m: m["modules"].pop("codec"))
    with pytest.raises(CheckpointError, match="no codec module"):
        WorldModel.load(bundle)
    with pytest.raises(CheckpointError, match="no module 'codec'.*flow_map, world"):
        from vidplan_server.models.world_model import load_codec

        load_codec(bundle)


def test_copy_module_assembles_a_bundle_from_separate_folders(bundle, tiny_policy_bundle):
    from vidplan_server.models.checkpoint import copy_module
    from vidplan_server.models.policy import load_policy

    copy_module(tiny_policy_bundle, bundle, "policy")
    assert set(read_manifest(bundle)["modules"]) == {"codec", "world", "flow_map", "policy"}
    a, b = load_policy(tiny_policy_bundle), load_policy(bundle)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    WorldModel.load(bundle)  # the other modules are untouched
    with pytest.raises(CheckpointError, match="no module 'value'"):
        copy_module(bundle, tiny_policy_bundle, "value")
