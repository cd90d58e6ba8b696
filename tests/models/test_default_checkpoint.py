"""The checkpoint shipped in the package loads, fits the size budget and predicts finite frames."""

import torch

from vidplan_server.models.checkpoint import DEFAULT_CHECKPOINT, read_manifest
from vidplan_server.models.world_model import WorldModel


def test_bundled_checkpoint_is_complete_and_small():
    manifest = read_manifest(DEFAULT_CHECKPOINT)
    assert {"codec", "world", "flow_map"} <= set(manifest["modules"])
    size = sum(p.stat().st_size for p in DEFAULT_CHECKPOINT.iterdir() if p.is_file())
    assert size < 30 * 2**20
    card = (DEFAULT_CHECKPOINT / "MODEL_CARD.md").read_text()
    assert "vidplan train flowmap" in card and "vidplan sim record" in card
    assert not (DEFAULT_CHECKPOINT / "training").exists()


def test_bundled_model_rolls_out_and_decodes():
    model = WorldModel.load()
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (1, model.history, 3, 64, 64, 3), dtype=torch.uint8, generator=g)
    history = model.encode(frames)
    assert history.shape == (1, model.history, 4, 48, 16)
    actions = torch.tensor([[0.5, 0.0, 0.3, 3.1, 0.0, 0.0, 0.0]]).repeat(1, model.horizon, 1)
    latents = model.rollout(history, actions, method="flow", steps=1, generator=g)
    assert latents.shape == (1, model.horizon, 4, 48, 16) and torch.isfinite(latents).all()
    video = model.decode(latents)
    assert video.shape == (1, model.horizon, 3, 3, 64, 64)
    assert 0.0 <= float(video.min()) and float(video.max()) <= 1.0
