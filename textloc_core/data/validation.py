"""Check a ConceptSet before any GPU work: every problem a user can fix, found at once.

``validate_concept_set`` collects all problems and raises one ``ConceptSetError`` (a
ValueError) listing them, each naming the input (concept, image index, file) and the fix.
It never changes the set. What passes comes back as a ``CheckedConceptSet``, which training
takes in place of the set and does not check again when it was checked for the same side and
model rule (a host such as the Train node checks before loading the model, once). Token checks that need the text encoder's vocabulary ("already
a word", "splits into several pieces") are passed in as ``vocabulary_check`` by whoever
holds the tokenizer, so this module stays free of models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .concepts import ConceptSet
from .imaging import fit_mask
from .masks import mask_coverage
from .safe_io import check_name
from .tokens import is_plain_word, token_text_problem

FULL_MASK_COVERAGE = 0.99
"""A mask covering at least this fraction of its photo cannot localise anything."""

LATENT_FACTOR = 8
"""Stable Diffusion's VAE divides the picture side by 8: the smallest rule, used when no model
is known. A model's own rule is its VAE factor times 2 per UNet downsampling
(``training.setup.size_multiple``: 64 for SD1.x), passed as ``size_multiple``."""

MAX_LISTED = 20
"""Problems spelled out in the message (all of them stay in ``ConceptSetError.problems``)."""


class ConceptSetError(ValueError):
    """A concept set that cannot be trained on; ``problems`` lists every reason, one a line."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        count = len(self.problems)
        header = "the concept set has a problem" if count == 1 else f"the concept set has {count} problems"
        shown = self.problems[:MAX_LISTED]
        more = f"\n- ... and {count - len(shown)} more of the same kinds" if count > len(shown) else ""
        super().__init__(header + ":\n- " + "\n- ".join(shown) + more)


@dataclass(frozen=True)
class CheckedConceptSet:
    """A concept set ``validate_concept_set`` passed, with the rules it passed under."""

    concept_set: ConceptSet
    resolution: int | None
    size_multiple: int | None
    center_crop: bool
    vocabulary_checked: bool

    def covers(self, resolution: int | None, size_multiple: int) -> bool:
        """It was checked as a training at ``resolution`` on a model of rule ``size_multiple``
        needs: the same side and rule, centre-cropped (as training fits photos), with the text
        encoder's vocabulary check."""
        same_rules = self.resolution == resolution and self.size_multiple == size_multiple
        return same_rules and self.center_crop and self.vocabulary_checked


def validate_concept_set(
    cs: ConceptSet,
    *,
    vocabulary_check: Callable[[str], None] | None = None,
    resolution: int | None = None,
    center_crop: bool = True,
    size_multiple: int | None = None,
) -> CheckedConceptSet:
    """Raise ``ConceptSetError`` when ``cs`` cannot be trained on as given; else ``cs`` as a
    ``CheckedConceptSet`` that records what it was checked for.

    ``vocabulary_check(token)`` should raise ValueError when the text encoder already knows
    ``token`` or cannot make it one new token; its message is reported with the concept.
    ``resolution`` is the training side in pixels (None: the photos' own size, which must
    then agree across photos). With a ``resolution``, masks are also checked as training will
    see them after resizing (and centre-cropping, ``center_crop``): an object outside the
    centre square leaves an empty mask. ``size_multiple``: the model's side rule in pixels
    (``training.setup.size_multiple``); given, the photos' own size is held to it too when
    ``resolution`` is None. None: ``LATENT_FACTOR`` for ``resolution`` only.
    """
    problems: list[str] = []
    problems += _concept_problems(cs, vocabulary_check)
    problems += _image_problems(cs, resolution, center_crop, size_multiple)
    if problems:
        raise ConceptSetError(problems)
    return CheckedConceptSet(cs, resolution, size_multiple, center_crop, vocabulary_check is not None)


def _concept_problems(cs: ConceptSet, vocabulary_check) -> list[str]:
    problems: list[str] = []
    if not cs.concepts:
        return ["no concepts are defined: add at least one concept (name, token, class word)"]
    seen_names: dict[str, str] = {}
    seen_tokens: dict[str, str] = {}
    for concept in cs.concepts:
        owner = f"concept {concept.name!r}"
        try:
            check_name(concept.name, "concept name")  # names become file and folder names
        except ValueError as error:
            problems.append(str(error))
        token_issue = token_text_problem(concept.token)
        if token_issue:
            problems.append(f"token {concept.token!r} of {owner} {token_issue}")
        # Names become file names and tokens are lower-cased by CLIP: compare without case.
        key = (concept.name or "").casefold()
        if key in seen_names:
            problems.append(f"two concepts are named {concept.name!r}: give each concept its own name")
        seen_names.setdefault(key, concept.name)
        token_key = (concept.token or "").casefold()
        if token_key in seen_tokens:
            problems.append(
                f"concepts {seen_tokens[token_key]!r} and {concept.name!r} share the token {concept.token!r}: "
                "each concept needs its own new token"
            )
        seen_tokens.setdefault(token_key, concept.name)
        if not token_issue and is_plain_word(concept.token):
            problems.append(
                f"token {concept.token!r} of {owner} is a plain word: the identifier must be new to the "
                f"model, e.g. '<{concept.token.lower()}>'"
            )
        elif not token_issue and vocabulary_check is not None:
            try:
                vocabulary_check(concept.token)
            except ValueError as error:
                problems.append(f"token {concept.token!r} of {owner}: {error}")
        if not isinstance(concept.class_word, str) or not concept.class_word.strip():
            problems.append(f"{owner} has no class word: say what it is ('doll', 'bucket'); prior images use it")
    return problems


def size_rule(multiple: int) -> str:
    """How the side rule reads in errors (one wording for validation and the trainer)."""
    return (
        f"a positive multiple of {multiple} pixels (the VAE's factor times the UNet's downsamplings"
        + (" for this model" if multiple != LATENT_FACTOR else "; 64 for SD1.x")
        + ", e.g. 512)"
    )


def _image_problems(cs: ConceptSet, resolution: int | None, center_crop: bool, size_multiple: int | None) -> list[str]:
    problems: list[str] = []
    fit = None
    multiple = size_multiple or LATENT_FACTOR
    if resolution is not None:
        if not isinstance(resolution, int) or resolution < multiple or resolution % multiple:
            problems.append(f"resolution {resolution!r} must be {size_rule(multiple)}")
        else:
            fit = (resolution, center_crop)
    if not cs.images:
        return problems + ["the concept set has no images: add photos with masks"]
    known = {c.name for c in cs.concepts}
    sizes: dict[tuple[int, int], int] = {}
    for index, item in enumerate(cs.images):
        where = f"image {index}" + (f" ({item.source})" if item.source else "")
        image = item.image
        if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            problems.append(f"{where} has shape {shape}, expected (3, H, W): convert it to RGB")
            continue
        height, width = image.shape[1:]
        sizes.setdefault((int(height), int(width)), index)
        if not image.is_floating_point() or not torch.isfinite(image).all() or image.min() < 0 or image.max() > 1:
            problems.append(f"{where} must be float values in [0, 1] (NaN, infinite or 0-255 values found)")
        if not item.masks:
            problems.append(f"{where} has no mask: give it a mask of at least one concept or drop it")
        for name, mask in item.masks.items():
            problems += _mask_problems(index, name, mask, item, (int(height), int(width)), known, fit)
    if size_multiple is not None and resolution is None:
        for (height, width), index in sizes.items():
            if height % multiple or width % multiple:
                problems.append(
                    f"image {index} is {width}x{height}: photo sides must be {size_rule(multiple)}; set a resolution"
                )
    if len(sizes) > 1 and resolution is None:
        described = ", ".join(f"{w}x{h} (image {i})" for (h, w), i in list(sizes.items())[:3])
        problems.append(
            f"the images have different sizes ({described}): choose a training resolution so they are "
            "resized to one square size"
        )
    for concept in cs.concepts:
        if not any(concept.name in item.masks for item in cs.images):
            problems.append(
                f"concept {concept.name!r} has no images: give at least one photo with a mask of the {concept.class_word}"
            )
    return problems


def _mask_problems(index: int, name: str, mask, item, size: tuple[int, int], known: set[str], fit) -> list[str]:
    """Problems of one mask: as given, then (``fit = (resolution, center_crop)``) as trained on."""
    source = item.mask_sources.get(name)
    label = f"mask {index} of concept {name!r}" + (f" ({source})" if source else "")
    if name not in known:
        return [f"{label} belongs to no defined concept (defined: {sorted(known)}): define {name!r} or remove the mask"]
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        return [f"{label} has shape {shape}, expected (H, W): give one single-channel mask per image"]
    if tuple(mask.shape) != size:
        return [
            f"{label} is {mask.shape[1]}x{mask.shape[0]} but image {index} is {size[1]}x{size[0]}: "
            "resize the mask to the photo (or paint it on the photo itself)"
        ]
    if not torch.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
        return [f"{label} has values outside [0, 1]: give a binary mask (0 background, 1 concept)"]
    coverage = mask_coverage(mask)
    if coverage == 0.0:
        return [f"{label} is empty: paint the {name} in the mask editor or drop image {index}"]
    if coverage >= FULL_MASK_COVERAGE:
        return [_full_mask_problem(label, name, coverage, "")]
    if fit is not None and size != (fit[0], fit[0]):
        fitted = mask_coverage(fit_mask(mask, *fit))
        how = f"after {'centre-cropping' if fit[1] else 'resizing'} to {fit[0]}x{fit[0]}"
        if fitted == 0.0:
            return [
                f"{label} is empty {how}: the {name} lies outside the part of the photo that is trained on; "
                f"crop the photo around the {name}" + (" or turn off centre cropping" if fit[1] else "")
            ]
        if fitted >= FULL_MASK_COVERAGE:
            return [_full_mask_problem(label, name, fitted, f" {how}")]
    return []


def _full_mask_problem(label: str, name: str, coverage: float, how: str) -> str:
    return (
        f"{label} covers {coverage:.1%} of the photo{how}: a mask of the whole picture tells the token nothing "
        f"about where the {name} is, so localization is meaningless. Paint only the {name} "
        "(if the mask is inverted, flip it with invert)"
    )
