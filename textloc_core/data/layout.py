"""What every concept-folder layout shares: image listings in natural order, paths shown
relative to the dataset folder, one photo read with its masks, and the concepts' defaults
and overrides. The layouts themselves are in ``readers``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..stop import StopCheck, check_stop
from .concepts import Concept, ConceptImage
from .imaging import IMAGE_SUFFIXES, fit_pair, open_picture, picture_size, picture_to_image, pixel_limit, reduce_factor
from .masks import to_binary_mask
from .safe_io import is_inside

IGNORED_FILES = {"thumbs.db", "desktop.ini"}
"""Files operating systems drop into folders; skipped like hidden (dot) files."""

MAX_IMAGES = 1000
"""Photos one concept set may hold (folder listing or manifest entries): the paper trains on
a handful per concept."""

MAX_CONCEPTS = 64
"""Concepts one concept set may define."""

MAX_SET_PIXELS = 1 << 25
"""Pixels all of a set's photos may hold together as trained on (after resizing): 384 MiB of
float32 RGB, e.g. 128 photos at 512 px, 8 at 2048 px, or 2 kept at 4096 px."""


def check_count(count: int, limit: int, what: str, where: str) -> None:
    """Refuse ``count`` ``what`` (photos, concepts) above ``limit``, before any is read."""
    if count > limit:
        raise ValueError(
            f"{where} has {count} {what}, more than the {limit} one concept set may hold (README, Security): "
            f"split it into several sets"
        )


def default_token(name: str) -> str:
    """The identifier token a concept gets unless one is given: ``"<name>"``, lower-cased (CLIP
    lower-cases prompts) with anything but letters, digits, ``_`` and ``-`` made ``_``
    ("My Doll" -> ``<my_doll>``), so it is one word that can sit in a prompt and a file name."""
    return "<" + re.sub(r"[^a-z0-9_-]", "_", name.strip().lower()) + ">"


def default_class_word(name: str) -> str:
    """The class word a concept gets unless one is given: its name, underscores as spaces."""
    return name.replace("_", " ").strip()


def natural_key(text: str) -> tuple:
    """Sort key that puts "2" before "10", as a person numbering photos expects. Names equal
    as numbers ("0" and "00") fall back to their text, so the order never depends on the
    order the file system lists them in."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)], text


def image_listing(folder: Path, root: Path, confine: Path | None = None) -> dict[str, Path]:
    """Image files of ``folder`` by stem, naturally sorted. Hidden and OS files are skipped;
    anything else that is not an image, or two files with one stem, is an error. With
    ``confine`` (the folder being read), a file or folder whose resolved path lies outside it
    (a symlink out of the dataset) is refused."""
    found: dict[str, Path] = {}
    if confine is not None:
        _refuse_outside(folder, root, confine)
    for entry in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
        if entry.name.startswith(".") or entry.name.lower() in IGNORED_FILES or entry.is_dir():
            continue
        shown = shown_path(entry, root)
        if confine is not None:
            _refuse_outside(entry, root, confine)
        if entry.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(
                f"{shown} is not an image file ({', '.join(IMAGE_SUFFIXES)}): move it out of {shown_path(folder, root)}/"
            )
        if entry.stem in found:
            raise ValueError(f"{shown_path(found[entry.stem], root)} and {shown} have the same name: keep one of them")
        found[entry.stem] = entry
    return found


def _refuse_outside(path: Path, root: Path, confine: Path) -> None:
    if not is_inside(confine, path):
        raise ValueError(
            f"{shown_path(path, root)} leads outside the dataset folder through a link: copy the file in instead"
        )


def shown_path(path: Path, root: Path) -> str:
    """``path`` as a person should see it in an error: relative to the dataset folder."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


@dataclass
class PixelBudget:
    """What is left of ``MAX_SET_PIXELS`` while one set is read."""

    left: int = MAX_SET_PIXELS

    def take(self, pixels: int, shown: str) -> None:
        if pixels > self.left:
            raise ValueError(
                f"{shown}: the photos read so far and this one hold more than {MAX_SET_PIXELS / 1e6:.1f} megapixels "
                "together as trained on, the limit of one concept set (README, Security): use fewer photos or a "
                "lower resolution"
            )
        self.left -= pixels


@dataclass(frozen=True)
class PhotoReader:
    """How one dataset is read: its folder (for error messages), the mask/resize options, the
    set's pixel budget, and the host's ``should_stop``, polled before each photo
    (``stop.check_stop``: a stop raises ``stop.Cancelled``)."""

    root: Path
    invert_masks: bool = False
    mask_channel: str = "auto"
    resolution: int | None = None
    center_crop: bool = True
    should_stop: StopCheck | None = None
    budget: PixelBudget = field(default_factory=PixelBudget)

    def load(self, index: int, image_path: Path, mask_paths: Mapping[str, Path]) -> ConceptImage:
        """Read one photo and its masks; resize them together when ``resolution`` is given.
        Sizes are read from the file headers and checked against the limits before decoding."""
        check_stop(self.should_stop, f"before reading photo {index}")
        limit = pixel_limit(self.resolution)
        shown_image = shown_path(image_path, self.root)
        width, height = picture_size(image_path, shown_image, limit)
        self.budget.take(self.resolution**2 if self.resolution else width * height, shown_image)
        factor = reduce_factor(width, height, self.resolution)
        image = picture_to_image(open_picture(image_path, shown_image, limit, factor))
        masks = {}
        for name, mask_path in mask_paths.items():
            shown = shown_path(mask_path, self.root)
            masks[name] = to_binary_mask(
                open_picture(mask_path, shown, limit, factor),
                invert=self.invert_masks,
                channel=self.mask_channel,
                what=f"mask {index} of concept {name!r} ({shown})",
            )
            if tuple(masks[name].shape) != tuple(image.shape[1:]):
                scale = f" (both read at 1/{factor} size)" if factor > 1 else ""
                raise ValueError(
                    f"mask {index} of concept {name!r} ({shown}) is {masks[name].shape[1]}x{masks[name].shape[0]} "
                    f"but its image {shown_image} is {image.shape[2]}x{image.shape[1]}{scale}: "
                    "save the mask at the photo's size"
                )
        if self.resolution is not None:
            image, masks = fit_pair(image, masks, self.resolution, self.center_crop)
        return ConceptImage(
            image=image,
            masks=masks,
            source=shown_image,
            mask_sources={name: shown_path(path, self.root) for name, path in mask_paths.items()},
        )


def make_concepts(
    names: list[str],
    tokens: Mapping[str, str] | None,
    class_words: Mapping[str, str] | None,
    where: str,
    base: Mapping[str, Concept] | None = None,
) -> list[Concept]:
    """Concepts for ``names``: ``tokens`` / ``class_words`` overrides, else the ``base`` concept's
    values (from a manifest), else the defaults. Overrides naming no concept are an error."""
    tokens, class_words, base = dict(tokens or {}), dict(class_words or {}), dict(base or {})
    for label, overrides in (("tokens", tokens), ("class_words", class_words)):
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise ValueError(f"{label}: {unknown} are not concepts of {where} (its concepts: {names})")
    concepts = []
    for name in names:
        given = base.get(name) or Concept(name, default_token(name), default_class_word(name))
        concepts.append(
            Concept(name, tokens.get(name, given.token), class_words.get(name, given.class_word), given.init_word)
        )
    return concepts
