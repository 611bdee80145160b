"""Concepts and concept sets: what the user wants learned, and the images and masks showing it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Concept:
    """One target to learn.

    ``name``: a short human name ("doll"), also used in file names.
    ``token``: the new identifier token written in prompts ("<doll1>"); must be new to the vocabulary.
    ``class_word``: the class the base model knows ("doll"); prior images use it.
    ``init_word``: the word whose embedding the token starts from (default: ``class_word``).
    """

    name: str
    token: str
    class_word: str
    init_word: str | None = None

    @property
    def initializer(self) -> str:
        return self.init_word or self.class_word


@dataclass
class ConceptImage:
    """One training photo and the masks of the concepts it shows.

    ``image``: (3, H, W) float32 in [0, 1]. ``masks``: concept name -> (H, W) float32 in {0, 1}
    (soft edges allowed). A concept absent from ``masks`` is not named in this image's prompt;
    other objects in the photo need no mask at all.
    """

    image: torch.Tensor
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    source: str = ""
    """Where the image came from (file path or "comfy:IMAGE[3]"), for error messages."""


@dataclass
class ConceptSet:
    """Concepts plus the images that show them; the unit every trainer call takes."""

    concepts: list[Concept]
    images: list[ConceptImage]

    def concept(self, name: str) -> Concept:
        for concept in self.concepts:
            if concept.name == name:
                return concept
        raise KeyError(f"concept {name!r} is not in this set ({[c.name for c in self.concepts]})")
