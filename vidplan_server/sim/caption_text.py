"""Words and captions of the simulated scene: the semantic encoder's whole vocabulary and what a caption
refers to.

An image of ``vidplan sim captions`` lists its *entities* (the manipulable objects and the container, each
with a colour and a noun). A caption names a *referent*: a colour and/or a noun, and the caption's mask is
the union of every entity that matches it ("red" covers every red object, "duck" every duck). Captions come
in the instruction forms the robot data uses ("pick up the red cube", "put the red cube in the tray",
whose referent is the object, not the container) and in short forms ("red cube", "cube", "red", "grey
tray").

Decided: the vocabulary is every word the simulator can say (all objects, colours and containers of every
split, and the instruction words), not only the words of the training instructions, so no simulator word
ever falls into a hash bucket, where unrelated words share an embedding.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np

from vidplan_server.models.semantic import words
from vidplan_server.sim.assets import (
    CONTAINER_COLOURS,
    CONTAINERS,
    OOD_COLOURS,
    OOD_OBJECTS,
    TRAIN_COLOURS,
    TRAIN_OBJECTS,
)

# The two instruction forms of `tasks.sample_task`; tests check that sampled instructions only use these words.
INSTRUCTION_FORMS = ("put the {object} in the {container}", "pick up the {object}")
# Caption forms for an object referent and their sampling weights.
OBJECT_FORMS = (
    ("pick up the {colour} {noun}", 0.25),
    ("put the {colour} {noun} in the {container}", 0.25),
    ("{colour} {noun}", 0.2),
    ("the {noun}", 0.15),
    ("{colour}", 0.15),
)
CONTAINER_FORMS = (("{colour} {noun}", 0.5), ("the {noun}", 0.5))


@dataclass(frozen=True)
class Entity:
    """One thing in a captioned image: an object or the container."""

    noun: str  # "teddy bear", "tray"
    colour: str  # "purple", "grey"
    kind: str = "object"  # "object" or "container"

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Caption:
    """A caption and its referent: entities whose colour (if given) and noun (if given) match."""

    text: str
    colour: str | None
    noun: str | None
    kind: str = "object"

    def matches(self, entity: Entity) -> bool:
        return (
            entity.kind == self.kind
            and (self.colour is None or entity.colour == self.colour)
            and (self.noun is None or entity.noun == self.noun)
        )


def simulator_vocabulary() -> tuple[str, ...]:
    """Every word of every object, colour, container and instruction / caption form of the simulator, sorted."""
    names = [o.name for o in TRAIN_OBJECTS + OOD_OBJECTS] + [c.name for c in CONTAINERS]
    names += [*TRAIN_COLOURS, *OOD_COLOURS, *CONTAINER_COLOURS]
    forms = [re.sub(r"\{\w+\}", " ", f) for f in (*INSTRUCTION_FORMS, *(f for f, _ in OBJECT_FORMS + CONTAINER_FORMS))]
    return tuple(sorted({w for text in names + forms for w in words(text)}))


def sample_caption(entities: list[Entity], referent: int, rng: np.random.Generator) -> Caption:
    """A caption of ``entities[referent]`` in a form drawn with the forms' weights."""
    e = entities[referent]
    container = next((x.noun for x in entities if x.kind == "container"), "tray")
    forms = OBJECT_FORMS if e.kind == "object" else CONTAINER_FORMS
    p = np.array([w for _, w in forms])
    form = forms[int(rng.choice(len(forms), p=p / p.sum()))][0]
    text = form.format(colour=e.colour, noun=e.noun, container=container)
    colour = e.colour if "{colour}" in form else None
    noun = e.noun if "{noun}" in form else None
    return Caption(text, colour, noun, e.kind)


def description(entity: Entity) -> Caption:
    """The unambiguous short caption "<colour> <noun>" of one entity."""
    return Caption(f"{entity.colour} {entity.noun}", entity.colour, entity.noun, entity.kind)


def is_novel_entity(entity: Entity) -> bool:
    """An object whose noun or colour the ``train`` split never uses."""
    ood_nouns = {o.name for o in OOD_OBJECTS}
    return entity.kind == "object" and (entity.noun in ood_nouns or entity.colour in OOD_COLOURS)


def referent_mask(caption: Caption, entities: list[Entity], labels: np.ndarray) -> np.ndarray:
    """Bool mask (..., H, W) of the pixels of every entity the caption refers to; ``labels`` hold entity index + 1
    (0 = nothing)."""
    ids = [i + 1 for i, e in enumerate(entities) if caption.matches(e)]
    return np.isin(labels, ids)
