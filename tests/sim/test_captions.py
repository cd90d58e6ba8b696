"""Captioned renders (`vidplan sim captions`) and the simulator's words: masks show what captions name,
generation resumes, the vocabulary covers everything the simulator says."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from vidplan_server.data.errors import DatasetError
from vidplan_server.models.semantic import SemanticConfig, Tokenizer, words
from vidplan_server.sim.assets import (
    CONTAINER_COLOURS,
    CONTAINERS,
    OOD_COLOURS,
    OOD_OBJECTS,
    SPLITS,
    TRAIN_COLOURS,
    TRAIN_OBJECTS,
)
from vidplan_server.sim.caption_text import (
    Entity,
    is_novel_entity,
    referent_mask,
    sample_caption,
    simulator_vocabulary,
)
from vidplan_server.sim.captions import CaptionConfig, generate_captions, load_captions
from vidplan_server.sim.tasks import sample_task

TINY = replace(CaptionConfig(), images_per_shard=1, poses_per_scene=1)
PALETTE = {**TRAIN_COLOURS, **OOD_COLOURS}


@pytest.fixture(scope="module")
def two_images(tmp_path_factory):
    out = tmp_path_factory.mktemp("captions") / "caps"
    summary = generate_captions(out, 2, seed=3, cfg=TINY, workers=1, progress=False)
    assert (summary.rendered, summary.skipped) == (2, 0)
    return out


def _nearest_colour(rgb: np.ndarray) -> str:
    names = list(PALETTE)
    pal = np.array([PALETTE[n] for n in names])
    chroma = rgb / rgb.sum()
    return names[int(np.argmin(((pal / pal.sum(1, keepdims=True) - chroma) ** 2).sum(1)))]


def test_masks_show_the_captioned_objects(two_images):
    data = load_captions(two_images)
    assert data.images.shape == (2, 3, 64, 64, 3) and data.labels.shape == (2, 3, 64, 64)
    checked = 0
    for i in range(2):
        ents = data.entities[i]
        assert 1 <= sum(e.kind == "object" for e in ents) <= 6 and sum(e.kind == "container" for e in ents) == 1
        assert data.labels[i].max() <= len(ents)
        for k, e in enumerate(ents):
            if e.kind != "object":
                continue
            for v in range(3):
                mask = data.labels[i, v] == k + 1
                if mask.sum() >= 10:  # the pixels under an object's mask have the colour its caption names
                    assert _nearest_colour(data.images[i, v][mask].astype(float).mean(0)) == e.colour
                    checked += 1
            # the "<colour> <noun>" caption's mask is exactly that object's, the colour alone covers all of that colour
            cap = sample_caption(ents, k, np.random.default_rng(0))
            same = [j + 1 for j, x in enumerate(ents) if cap.matches(x)]
            assert k + 1 in same
            np.testing.assert_array_equal(referent_mask(cap, ents, data.labels[i]), np.isin(data.labels[i], same))
    assert checked > 0
    # every object's position, NaN-padded to the most objects a scene can have; on the table or in the fingers
    assert data.positions.shape == (2, TINY.objects[1], 3)
    for i in range(2):
        n = sum(e.kind == "object" for e in data.entities[i])
        assert np.isfinite(data.positions[i, :n]).all() and np.isnan(data.positions[i, n:]).all()
        assert ((data.positions[i, :n, 2] > -0.01) & (data.positions[i, :n, 2] < 0.45)).all()
    # the wrist camera is above the table, looking down at the heights of an approach
    assert ((data.tcp[:, 2] >= 0.0) & (data.tcp[:, 2] <= 0.4)).all()


def test_generation_resumes_and_refuses_other_arguments(two_images, tmp_path):
    before = load_captions(two_images)
    (two_images / "shard_00001.npz").unlink()
    with pytest.raises(DatasetError, match="shard_00001"):
        load_captions(two_images)
    summary = generate_captions(two_images, 2, seed=3, cfg=TINY, workers=1, progress=False)
    assert (summary.rendered, summary.skipped) == (1, 1)
    after = load_captions(two_images)
    np.testing.assert_array_equal(before.images, after.images)  # shards depend on (seed, shard) alone
    np.testing.assert_array_equal(before.labels, after.labels)
    assert before.entities == after.entities
    with pytest.raises(DatasetError, match="another seed"):
        generate_captions(two_images, 2, seed=4, cfg=TINY, workers=1, progress=False)
    with pytest.raises(DatasetError, match="captions.json"):
        load_captions(tmp_path)


def test_parallel_workers_write_the_same_shards(two_images, tmp_path):
    generate_captions(tmp_path / "par", 2, seed=3, cfg=TINY, workers=2, progress=False)
    a, b = load_captions(two_images), load_captions(tmp_path / "par")
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.entities == b.entities


def test_vocabulary_covers_every_simulator_word():
    vocab = set(simulator_vocabulary())
    rng = np.random.default_rng(0)
    for split in SPLITS:
        for _ in range(100):
            spec, task = sample_task(rng, split)
            assert set(words(task.instruction)) <= vocab, task.instruction
            assert {w for o in spec.objects for w in words(f"{o.colour} {o.asset.name}")} <= vocab
    names = [o.name for o in TRAIN_OBJECTS + OOD_OBJECTS] + [c.name for c in CONTAINERS]
    assert {w for n in [*names, *PALETTE, *CONTAINER_COLOURS] for w in words(n)} <= vocab
    ents = [Entity(o.name, c) for o in TRAIN_OBJECTS + OOD_OBJECTS for c in PALETTE]
    ents.append(Entity("box", "grey", "container"))
    for k in range(len(ents)):
        assert set(words(sample_caption(ents, k, rng).text)) <= vocab


def test_ood_words_have_their_own_ids():
    tok = Tokenizer(SemanticConfig(vocab=simulator_vocabulary()))
    ood = sorted({w for o in OOD_OBJECTS for w in words(o.name)} | set(OOD_COLOURS))
    ids = tok([" ".join(ood)])[0, : len(ood)].tolist()
    assert len(set(ids)) == len(ood)  # no two ood words share an embedding
    assert max(ids) <= len(simulator_vocabulary())  # all in the vocabulary, none in a hash bucket
    assert is_novel_entity(Entity("cube", "pink")) and is_novel_entity(Entity("ball", "red"))
    assert not is_novel_entity(Entity("cube", "red")) and not is_novel_entity(Entity("tray", "grey", "container"))


def test_instruction_captions_refer_to_the_object_not_the_container():
    ents = [Entity("cube", "red"), Entity("duck", "red"), Entity("tray", "grey", "container")]
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(200):
        cap = sample_caption(ents, 0, rng)
        seen.add(cap.text)
        assert cap.matches(ents[0]) and not cap.matches(ents[2])
        assert cap.matches(ents[1]) == (cap.text == "red")  # only the colour alone also names the red duck
    assert {"put the red cube in the tray", "pick up the red cube", "red cube", "the cube", "red"} == seen
