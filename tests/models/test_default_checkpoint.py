"""The checkpoint shipped in the package loads, fits the size budget and predicts finite frames."""

import torch

from vidplan_server.models.checkpoint import DEFAULT_CHECKPOINT, read_manifest
from vidplan_server.models.world_model import WorldModel


def test_bundled_checkpoint_is_complete_and_small():
    manifest = read_manifest(DEFAULT_CHECKPOINT)
    modules = {"codec", "world", "flow_map", "uq", "value", "semantic", "colormap", "policy", "locator"}
    assert modules <= set(manifest["modules"])
    size = sum(p.stat().st_size for p in DEFAULT_CHECKPOINT.iterdir() if p.is_file())
    assert size < 60 * 2**20  # issue 12: the bundle stays under 60 MB
    card = (DEFAULT_CHECKPOINT / "MODEL_CARD.md").read_text()
    for command in (
        "vidplan sim record",
        "vidplan train flowmap",
        "vidplan train uq",
        "vidplan train value",
        "vidplan train semantic",
        "vidplan train policy",
        "vidplan train locator",
        "vidplan sim captions",
        "vidplan eval calibration",
        "vidplan eval reward",
    ):
        assert command in card, command
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


def test_bundled_heads_judge_a_rollout():
    from vidplan_server.models.bins import ERROR_BINS, VALUE_BINS
    from vidplan_server.models.heads import load_uq_head, load_value_head
    from vidplan_server.models.semantic import load_semantic

    model = WorldModel.load()
    uq, value, semantic = load_uq_head(DEFAULT_CHECKPOINT), load_value_head(DEFAULT_CHECKPOINT), load_semantic()
    assert uq.config.history == model.history and uq.config.net.frames == model.horizon
    g = torch.Generator().manual_seed(0)
    history = torch.randn(2, model.history, 4, 48, 16, generator=g)
    pred = torch.randn(2, model.horizon, 4, 48, 16, generator=g)
    with torch.no_grad():
        u = ERROR_BINS.normalized_entropy(uq(pred, history))
    assert u.shape == pred.shape and 0.0 <= float(u.min()) and float(u.max()) <= 1.0
    with torch.no_grad():
        v = VALUE_BINS.expected(value(pred))
    assert v.shape == (2, model.horizon) and 0.0 <= float(v.min()) and float(v.max()) <= 1.0
    scores = semantic.score(torch.rand(3, 3, 64, 64), semantic.encode_text(["pick up the red cube"] * 3))
    assert scores.relevance.shape == (3, 16, 16) and torch.isfinite(scores.frame).all()
