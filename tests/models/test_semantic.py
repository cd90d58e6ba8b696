"""Semantic reward backends: the project's own dual encoder and local transformers CLIP / SigLIP folders."""

import json

import pytest
import torch

from vidplan_server.models.checkpoint import CheckpointError, save_module
from vidplan_server.models.semantic import (
    SemanticConfig,
    SimDualEncoder,
    Tokenizer,
    clip_loss,
    load_semantic,
    relevance_centroid,
)

WORDS = ["pick", "up", "the", "red", "cube", "put", "in", "bowl", "blue"]


def _tiny_tokenizer(folder):
    from transformers import CLIPTokenizer

    letters = list("abcdefghijklmnopqrstuvwxyz")
    tokens = (
        letters + [c + "</w>" for c in letters] + [w + "</w>" for w in WORDS] + ["<|startoftext|>", "<|endoftext|>"]
    )
    vocab = {t: i for i, t in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)
    return vocab


@pytest.fixture(scope="module", params=["clip", "siglip"])
def hf_folder(request, tmp_path_factory):
    """A tiny random CLIP or SigLIP model saved with save_pretrained, plus a tiny tokenizer."""
    pytest.importorskip("transformers")
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    folder = tmp_path_factory.mktemp(request.param)
    vocab = _tiny_tokenizer(folder)
    torch.manual_seed(0)
    text = dict(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=16,
    )
    vision = dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )
    if request.param == "clip":
        ids = dict(
            eos_token_id=vocab["<|endoftext|>"],
            bos_token_id=vocab["<|startoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        )
        model = CLIPModel(CLIPConfig(text_config={**text, **ids}, vision_config=vision, projection_dim=8))
    else:
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
    model.save_pretrained(folder)
    return request.param, folder


def test_hf_backend_loads_a_local_folder_and_scores_frames(hf_folder):
    kind, folder = hf_folder
    enc = load_semantic(clip_folder=folder)
    assert enc.kind == kind and enc.image_size == (32, 32)
    text = enc.encode_text(["pick up the red cube", "put the blue cube in the bowl"])
    assert text.shape[0] == 2 and torch.allclose(text.norm(dim=-1), torch.ones(2), atol=1e-5)
    scores = enc.score(torch.rand(2, 3, 64, 64), text)
    assert scores.frame.shape == (2,) and bool(((scores.frame >= -1) & (scores.frame <= 1)).all())
    assert scores.relevance.shape == (2, 4, 4)
    assert scores.relevance.min() >= 0 and scores.relevance.max() <= 1
    assert scores.centroid.shape == (2, 2) and bool(((scores.centroid >= 0) & (scores.centroid <= 1)).all())


def test_hf_backend_reports_what_is_wrong_with_a_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_semantic(clip_folder=tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="'bert' is not supported"):
        load_semantic(clip_folder=tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(CheckpointError, match="cannot load"):
        load_semantic(clip_folder=tmp_path)


def test_tokenizer_hashes_unknown_words_into_buckets():
    tok = Tokenizer(SemanticConfig(vocab=("cube", "red"), oov_buckets=4, max_words=5))
    ids = tok(["Red cube!", "purple cube", ""])
    assert ids[0, :2].tolist() == [2, 1] and ids[0, 2:].tolist() == [0, 0, 0]
    assert 3 <= ids[1, 0] < 3 + 4  # "purple" -> a bucket after padding + vocabulary
    assert tok(["purple"])[0, 0] == ids[1, 0]  # the same word always hashes to the same bucket
    assert ids[2].tolist() == [0] * 5


def test_own_dual_encoder_round_trips_through_a_bundle(tmp_path):
    config = SemanticConfig(vocab=tuple(WORDS), channels=(8, 8), dim=16)
    torch.manual_seed(0)
    model = SimDualEncoder(config).eval()
    save_module(tmp_path, "semantic", model, config)
    loaded = load_semantic(tmp_path)
    images = torch.rand(3, 3, 64, 64)
    text = model.encode_text(["pick up the red cube"] * 3)
    a, b = model.score(images, text), loaded.score(images, loaded.encode_text(["pick up the red cube"] * 3))
    assert torch.allclose(a.frame, b.frame, atol=1e-6) and torch.allclose(a.relevance, b.relevance, atol=1e-6)
    assert a.relevance.shape == (3, 16, 16)


def test_relevance_centroid_finds_the_most_relevant_blob():
    rel = torch.zeros(2, 16, 16)
    rel[0, 3:6, 10:13] = 1.0  # one blob centred on cell (4, 11)
    rel[1, 2:4, 2:4] = 1.0  # strong blob
    rel[1, 12:14, 12:14] = 0.6  # weaker blob far away: must not pull the centroid between the two
    c = relevance_centroid(rel)
    assert c[0].tolist() == pytest.approx([11.5 / 16, 4.5 / 16], abs=0.005)  # within a tenth of a cell
    assert c[1].tolist() == pytest.approx([3.0 / 16, 3.0 / 16], abs=0.02)


def test_clip_loss_prefers_matching_pairs():
    img = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    same = torch.eye(4, dtype=torch.bool)
    scale = torch.tensor(2.659)
    matched = clip_loss(img, img, scale, same)
    shuffled = clip_loss(img, img.roll(1, 0), scale, same)
    assert matched < shuffled
