"""What exists in TinyWorld: object kinds, backgrounds, held-out concepts, scene specs, captions.

A scene is plain data (``SceneSpec``): a background and one to three objects, each a shape in
a colour with a texture at a position. ``render.render_scene`` turns a spec into pixels and
exact masks; this module only decides *what* is in a scene, seeded and deterministic.

Some kinds are held out of pretraining on purpose (``HELD_OUT``): they never come out of
``sample_pretraining_scene``, so the base model has never seen them, yet each one belongs to
a shape class the model knows. They are the NEW concepts personalisation experiments teach.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.concepts import with_article
from .shapes import IMAGE_SIZE, object_coverage

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "diamond")
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.10),
    "orange": (1.00, 0.55, 0.05),
    "yellow": (0.98, 0.90, 0.10),
    "green": (0.35, 0.95, 0.30),
    "blue": (0.12, 0.25, 0.95),
    "purple": (0.60, 0.15, 0.80),
    "pink": (1.00, 0.50, 0.75),
    "white": (0.97, 0.97, 0.97),
}
TEXTURES = ("plain", "striped", "dotted", "checkered")
BACKGROUNDS = ("grass", "sky", "night", "sand")

MIN_RADIUS, MAX_RADIUS = 8.0, 11.0
MIN_VISIBLE_FRACTION = 0.6
"""Occlusion is allowed, but every object keeps at least this share of its pixels visible."""


@dataclass(frozen=True)
class ObjectKind:
    """What an object looks like, independent of where it is."""

    shape: str
    colour: str
    texture: str = "plain"

    def phrase(self) -> str:
        """Caption words: 'red star', 'blue dotted ring' (plain texture is not named)."""
        words = [self.colour] + ([] if self.texture == "plain" else [self.texture]) + [self.shape]
        return " ".join(words)

    def validate(self) -> None:
        for value, allowed, what in (
            (self.shape, SHAPES, "shape"),
            (self.colour, tuple(COLOURS), "colour"),
            (self.texture, TEXTURES, "texture"),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {what} {value!r}: choose one of {list(allowed)}")


@dataclass(frozen=True)
class PlacedObject:
    """An object kind at a place: centre (cx, cy) in pixels and radius r."""

    kind: ObjectKind
    cx: float
    cy: float
    r: float


@dataclass(frozen=True)
class SceneSpec:
    """Everything needed to render one scene; objects are painted in order (later on top)."""

    background: str
    objects: tuple[PlacedObject, ...]
    texture_seed: int = 0
    """Seeds the background's noise, so equal specs render equal pixels."""

    def caption(self, order: tuple[int, ...] | None = None) -> str:
        """'a red star and a blue dotted ring on grass'; ``order`` permutes the objects named."""
        order = tuple(range(len(self.objects))) if order is None else order
        phrases = [with_article(self.objects[i].kind.phrase()) for i in order]
        if len(phrases) == 1:
            listed = phrases[0]
        else:
            listed = ", ".join(phrases[:-1]) + " and " + phrases[-1]
        return f"{listed} on {self.background}"


@dataclass(frozen=True)
class HeldOutConcept:
    """A kind the base model never saw, taught later as a new concept.

    ``pattern`` (shape, colour, texture with None as wildcard) is what pretraining excludes;
    ``kind`` is the concept's exact look; ``companion`` is the object it always stands next to
    in its personalisation set (like the paper's bucket next to the doll).
    """

    name: str
    class_word: str
    kind: ObjectKind
    pattern: tuple[str | None, str | None, str | None]
    companion: ObjectKind
    companion_name: str


_HELD_OUT_TABLE = (
    # name, class word, its look (shape, colour, texture), what pretraining excludes, companion (shape, colour)
    # a texture on a shape: no dotted star is ever shown
    ("dotstar", "star", ("star", "orange", "dotted"), ("star", None, "dotted"), ("circle", "blue")),
    # a texture on a shape: no checkered ring is ever shown
    ("checkring", "ring", ("ring", "green", "checkered"), ("ring", None, "checkered"), ("triangle", "red")),
    # a colour pairing: no purple square is ever shown
    ("stripebox", "square", ("square", "purple", "striped"), ("square", "purple", None), ("circle", "yellow")),
)
HELD_OUT: tuple[HeldOutConcept, ...] = tuple(
    # the companion is named by its look: 'bluecircle'
    HeldOutConcept(name, word, ObjectKind(*look), excluded, ObjectKind(*companion), "".join(reversed(companion)))
    for name, word, look, excluded, companion in _HELD_OUT_TABLE
)


def held_out_concept(name: str) -> HeldOutConcept:
    for concept in HELD_OUT:
        if concept.name == name:
            return concept
    raise ValueError(f"unknown TinyWorld concept {name!r}: choose one of {[c.name for c in HELD_OUT]}")


def is_held_out(kind: ObjectKind) -> bool:
    """True if ``kind`` matches any held-out pattern (and so never appears in pretraining)."""
    for concept in HELD_OUT:
        shape, colour, texture = concept.pattern
        if (shape in (None, kind.shape)) and (colour in (None, kind.colour)) and (texture in (None, kind.texture)):
            return True
    return False


ALL_KINDS: tuple[ObjectKind, ...] = tuple(ObjectKind(s, c, t) for s in SHAPES for c in COLOURS for t in TEXTURES)
PRETRAINING_KINDS: tuple[ObjectKind, ...] = tuple(k for k in ALL_KINDS if not is_held_out(k))


def _sample_kind(rng: np.random.Generator, kinds: tuple[ObjectKind, ...]) -> ObjectKind:
    # plain objects are the common case so that "a red star" is learned well
    if rng.random() < 0.4:
        plain = [k for k in kinds if k.texture == "plain"]
        return plain[rng.integers(len(plain))]
    return kinds[rng.integers(len(kinds))]


def place_objects(rng: np.random.Generator, kinds: list[ObjectKind], tries: int = 200) -> tuple[PlacedObject, ...]:
    """Random positions and sizes for ``kinds`` keeping each object mostly visible and in frame."""
    for _ in range(tries):
        placed = []
        for kind in kinds:
            r = float(rng.uniform(MIN_RADIUS, MAX_RADIUS))
            cx = float(rng.uniform(r + 1, IMAGE_SIZE - r - 1))
            cy = float(rng.uniform(r + 1, IMAGE_SIZE - r - 1))
            placed.append(PlacedObject(kind, cx, cy, r))
        covers = [object_coverage(p) for p in placed]
        ok = True
        for i, cover in enumerate(covers):
            hidden = np.zeros_like(cover)
            for later in covers[i + 1 :]:
                hidden |= later
            if (cover & ~hidden).sum() < MIN_VISIBLE_FRACTION * cover.sum():
                ok = False
                break
        if ok:
            return tuple(placed)
    raise RuntimeError(f"could not place {len(kinds)} objects without hiding one; use fewer objects")


def sample_scene(
    rng: np.random.Generator,
    kinds: tuple[ObjectKind, ...] = PRETRAINING_KINDS,
    n_objects: int | None = None,
    background: str | None = None,
) -> SceneSpec:
    """A random scene of 1-3 distinct objects drawn from ``kinds``."""
    n = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25])) if n_objects is None else n_objects
    chosen: list[ObjectKind] = []
    while len(chosen) < n:
        kind = _sample_kind(rng, kinds)
        # two objects of the same colour and shape would make captions and masks ambiguous
        if all((kind.shape, kind.colour) != (c.shape, c.colour) for c in chosen):
            chosen.append(kind)
    bg = BACKGROUNDS[rng.integers(len(BACKGROUNDS))] if background is None else background
    if bg not in BACKGROUNDS:
        raise ValueError(f"unknown background {bg!r}: choose one of {list(BACKGROUNDS)}")
    return SceneSpec(bg, place_objects(rng, chosen), int(rng.integers(2**31)))


def sample_pretraining_scene(rng: np.random.Generator, n_objects: int | None = None) -> SceneSpec:
    """A scene the base model may see: never contains a held-out kind."""
    return sample_scene(rng, PRETRAINING_KINDS, n_objects)


def sample_any_scene(rng: np.random.Generator, n_objects: int | None = None) -> SceneSpec:
    """A scene from the whole world, held-out kinds included (the judge must know them)."""
    return sample_scene(rng, ALL_KINDS, n_objects)


def personalization_specs(name: str, seed: int, n_images: int = 5) -> list[SceneSpec]:
    """``n_images`` scenes where held-out concept ``name`` stands next to its companion.

    The concept is always painted last (fully visible); backgrounds vary.
    """
    concept = held_out_concept(name)
    rng = np.random.default_rng([seed, 7919])
    specs = []
    for i in range(n_images):
        objs = place_objects(rng, [concept.companion, concept.kind])
        # the pair stands side by side, like two photographed objects: close, barely overlapping
        for _ in range(500):
            a, b = objs
            dist = float(np.hypot(a.cx - b.cx, a.cy - b.cy))
            if a.r + b.r - 2 <= dist <= a.r + b.r + 6:
                break
            objs = place_objects(rng, [concept.companion, concept.kind])
        bg = BACKGROUNDS[i % len(BACKGROUNDS)] if n_images >= len(BACKGROUNDS) else BACKGROUNDS[rng.integers(4)]
        specs.append(SceneSpec(bg, objs, int(rng.integers(2**31))))
    return specs
