"""Concepts and concept sets: what the user wants learned, and the images and masks showing it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from .imaging import fit_pair
from .masks import to_binary_mask


def with_article(phrase: str) -> str:
    """``phrase`` with its indefinite article, as prompts name things: "an orange dotted star",
    "a <tw1> star"."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


@dataclass(frozen=True)
class Concept:
    """One target to learn.

    ``name``: a short human name ("doll"), also used in file names.
    ``token``: the new identifier token written in prompts ("<doll1>"); must be new to the vocabulary.
    ``class_word``: the class the base model knows ("doll"); prior images use it.
    ``init_word``: the word whose embedding the token starts from (default: ``class_word``;
    a word of several vocabulary pieces starts from their mean).
    """

    name: str
    token: str
    class_word: str
    init_word: str | None = None

    @property
    def initializer(self) -> str:
        """The word the token starts from: ``init_word``, else the class word."""
        return self.init_word or self.class_word

    @property
    def initializer_input(self) -> str:
        """The input ``initializer`` comes from, for errors: "init_word" or "class_word"."""
        return "init_word" if self.init_word else "class_word"


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
    mask_sources: dict[str, str] = field(default_factory=dict)
    """Concept name -> where that mask came from ("masks/doll/3.png", "MASK[3]"), for errors."""


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

    def indices_with(self, name: str) -> list[int]:
        """Indices of the images that have a mask for concept ``name`` (and so name it in prompts)."""
        return [index for index, item in enumerate(self.images) if name in item.masks]

    @classmethod
    def from_tensors(
        cls,
        images: torch.Tensor,
        masks: torch.Tensor,
        concept: Concept,
        *,
        invert: bool = False,
        source: str = "comfy:IMAGE",
    ) -> ConceptSet:
        """One concept from ComfyUI tensors: ``images`` an IMAGE ``(B, H, W, 3)`` (or 4 channels,
        alpha dropped), ``masks`` a MASK ``(B, H, W)`` with 1 = the concept, one per image (mask
        pictures loaded as an IMAGE ``(B, H, W, 3)`` work too: white or any bright colour = concept).

        ``invert`` flips the masks (for masks that mark the background). Masks are binarised at
        0.5. Several concepts over the same photos: build one set per concept and ``merge`` them.
        Sizes are checked by ``validation.validate_concept_set``; counts are checked here.
        """
        images = _as_image_batch(images)
        if masks.dim() == 2:
            masks = masks[None]
        # A MASK (B, H, W), or black-and-white mask pictures loaded as an IMAGE (B, H, W, C).
        if not (masks.dim() == 3 or (masks.dim() == 4 and masks.shape[-1] in (1, 3, 4))):
            raise ValueError(f"MASK for concept {concept.name!r}: expected (B, H, W), got shape {tuple(masks.shape)}")
        height, width = images.shape[1:3]
        if tuple(masks.shape[1:3]) != (height, width) and _is_empty_placeholder(masks):
            raise ValueError(
                f"MASK for concept {concept.name!r} is ComfyUI's empty 64x64 placeholder (the photo had "
                f"no alpha channel, so LoadImage made no mask): open the image in the mask editor, "
                f"paint the {concept.class_word}, and connect that node's MASK"
            )
        if masks.shape[0] != images.shape[0]:
            raise ValueError(
                f"IMAGE has {images.shape[0]} image(s) but the MASK for concept {concept.name!r} has "
                f"{masks.shape[0]}: give exactly one mask per image, in the same order"
            )
        items = []
        for index in range(images.shape[0]):
            mask = to_binary_mask(masks[index], invert=invert, what=f"mask {index} of concept {concept.name!r}")
            items.append(
                ConceptImage(
                    image=images[index].permute(2, 0, 1).contiguous(),
                    masks={concept.name: mask},
                    source=f"{source}[{index}]",
                    mask_sources={concept.name: f"MASK[{index}]"},
                )
            )
        return cls(concepts=[concept], images=items)

    @classmethod
    def merge(cls, *sets: ConceptSet) -> ConceptSet:
        """Combine sets that show different concepts on the *same* photos (one set per concept,
        as ``from_tensors`` builds them) into one set whose images carry all the masks.

        The photos must be identical, image by image; a concept may appear in only one set.
        """
        if not sets:
            raise ValueError("merge: give at least one concept set")
        first = sets[0]
        concepts = list(first.concepts)
        images = [
            ConceptImage(item.image, dict(item.masks), item.source, dict(item.mask_sources)) for item in first.images
        ]
        for other in sets[1:]:
            names = ", ".join(repr(c.name) for c in other.concepts)
            if len(other.images) != len(images):
                raise ValueError(
                    f"merge: the set of concept(s) {names} has {len(other.images)} image(s), the first set "
                    f"has {len(images)}: connect the same IMAGE batch to every concept"
                )
            for concept in other.concepts:
                if any(c.name == concept.name for c in concepts):
                    raise ValueError(f"merge: concept {concept.name!r} is given twice: give each concept a unique name")
                concepts.append(concept)
            for index, (mine, theirs) in enumerate(zip(images, other.images)):
                if mine.image.shape != theirs.image.shape or not torch.equal(mine.image, theirs.image):
                    raise ValueError(
                        f"merge: image {index} differs between the sets of {concepts[0].name!r} and "
                        f"{names} ({mine.source} vs {theirs.source}): every concept must be masked on "
                        "the same photos, in the same order"
                    )
                mine.masks.update(theirs.masks)
                mine.mask_sources.update(theirs.mask_sources)
        return cls(concepts=concepts, images=images)

    def same_photos(self, other: ConceptSet) -> bool:
        """True when both sets hold identical photos in the same order (so ``merge`` applies)."""
        return len(self.images) == len(other.images) and all(
            a.image.shape == b.image.shape and torch.equal(a.image, b.image) for a, b in zip(self.images, other.images)
        )

    @classmethod
    def concat(cls, *sets: ConceptSet) -> ConceptSet:
        """The photos of all ``sets`` one after another (e.g. photos of the doll alone plus
        photos of the doll with the bucket). A concept in several sets must be defined the same."""
        concepts: dict[str, Concept] = {}
        images: list[ConceptImage] = []
        for part in sets:
            for concept in part.concepts:
                if concepts.setdefault(concept.name, concept) != concept:
                    raise ValueError(
                        f"concat: concept {concept.name!r} is defined twice differently "
                        f"({concepts[concept.name]} vs {concept}): use one token and class word"
                    )
            images.extend(part.images)
        return cls(concepts=list(concepts.values()), images=images)

    def resized(self, resolution: int, *, center_crop: bool = True) -> ConceptSet:
        """A copy at ``resolution x resolution``: shorter side scaled then centre-cropped
        (``center_crop``), or stretched. Masks follow the same geometry and stay binary."""
        items = []
        for item in self.images:
            image, masks = fit_pair(item.image, item.masks, resolution, center_crop)
            items.append(ConceptImage(image, masks, item.source, dict(item.mask_sources)))
        return ConceptSet(concepts=list(self.concepts), images=items)

    def data_hash(self) -> str:
        """SHA-256 (hex) of the training data: every image as 8-bit pixels and every mask as
        bits, with concept names, in order. Stored in adapter metadata; the same photos and
        masks hash the same whether they came from files or from ComfyUI tensors."""
        digest = hashlib.sha256()
        for item in self.images:
            pixels = (item.image.detach().to(torch.float32).clamp(0, 1) * 255).round().to(torch.uint8).cpu()
            digest.update(f"image {tuple(pixels.shape)}".encode())
            digest.update(pixels.contiguous().numpy().tobytes())
            for name in sorted(item.masks):
                bits = (item.masks[name].detach() >= 0.5).to(torch.uint8).cpu()
                digest.update(f"mask {name!r} {tuple(bits.shape)}".encode())
                digest.update(bits.contiguous().numpy().tobytes())
        return digest.hexdigest()


def _as_image_batch(images: torch.Tensor) -> torch.Tensor:
    """A ComfyUI IMAGE as (B, H, W, 3) float32 in [0, 1]; a single (H, W, C) image becomes a batch of one."""
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4 or images.shape[-1] not in (3, 4) or images.shape[0] < 1:
        raise ValueError(f"IMAGE: expected a ComfyUI image batch (B, H, W, 3), got shape {tuple(images.shape)}")
    images = images[..., :3].detach().to("cpu", torch.float32)
    if not torch.isfinite(images).all():
        raise ValueError("IMAGE has NaN or infinite values: check the node that produced it")
    return images.clamp(0.0, 1.0)


def _is_empty_placeholder(masks: torch.Tensor) -> bool:
    """ComfyUI's LoadImage returns an all-zero 64x64 MASK for photos without alpha."""
    return masks.dim() == 3 and tuple(masks.shape[-2:]) == (64, 64) and not bool(masks.any())
