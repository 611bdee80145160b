"""Other objects named in the instance prompts (``TrainConfig.other_object_rate``).

The photos name only the concepts, so the adapter never sees its token beside a second named
object, and at sampling time the concept's colour spreads to it ("a <tw1> star and a red
triangle" draws an orange triangle; docs/results.md, round 4). With this lever a share of the
instance rows also name an object the photo does not show, a colour and a thing from the common
caption words ("... and a red triangle", "... and a green dog"). Outside preservation holds the
pixels outside the concepts' masks to the base model's prediction for that same prompt without
the token, so the adapter learns to leave a named second object as the base model would draw
it; the masked loss never asks for the object, so nothing teaches that it is absent. It needs
outside preservation on (``TrainConfig`` refuses it without), and costs nothing per step.
"""

from __future__ import annotations

import torch

from ..data.concepts import with_article
from .preservation import COLOUR_WORDS, SHAPE_WORDS, SUBJECT_WORDS

OBJECT_WORDS = SHAPE_WORDS + SUBJECT_WORDS
"""The things another object can be: the common caption words' shapes and subjects."""


def draw_other_objects(rate: float, rows: int, generator: torch.Generator) -> list[str | None]:
    """For each of ``rows`` instance rows, with probability ``rate`` an object phrase ("a red
    triangle"), else None; drawn from ``generator`` (the step's, so a resumed run draws the same)."""
    picks = torch.rand(rows, generator=generator) < rate
    colours = torch.randint(len(COLOUR_WORDS), (rows,), generator=generator)
    things = torch.randint(len(OBJECT_WORDS), (rows,), generator=generator)
    return [
        with_article(f"{COLOUR_WORDS[c]} {OBJECT_WORDS[t]}") if pick else None
        for pick, c, t in zip(picks.tolist(), colours.tolist(), things.tolist())
    ]


def with_other_objects(prompts: list[str], others: list[str | None]) -> list[str]:
    """Each prompt with its row's other object appended ("a <tw1> star" -> "a <tw1> star and a
    red triangle"); a row without one keeps its prompt."""
    return [p if o is None else f"{p} and {o}" for p, o in zip(prompts, others)]
