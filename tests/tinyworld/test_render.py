"""The TinyWorld renderer: exact masks, determinism, held-out kinds, personalisation sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from textloc_core import tinyworld
from textloc_core.data.concepts import ConceptSet
from textloc_core.tinyworld import render, shapes, world


def _scenes(n=60, seed=3):
    rng = np.random.default_rng(seed)
    return [world.sample_any_scene(rng) for _ in range(n)]


def test_masks_are_exactly_the_visible_object_pixels():
    for spec in _scenes():
        scene = render.render_scene(spec)
        background = render.render_background(spec.background, spec.texture_seed)
        covered = np.zeros(scene.ids.shape, bool)
        for k in range(len(spec.objects) - 1, -1, -1):  # topmost first
            obj = spec.objects[k]
            coverage = shapes.object_coverage(obj)
            # visible = covered by this object and by no object painted after it
            np.testing.assert_array_equal(scene.masks[k], coverage & ~covered)
            # mask pixels carry the object's own (textured) colour, whatever is beneath
            alone = render.render_scene(world.SceneSpec(spec.background, (obj,), spec.texture_seed))
            np.testing.assert_array_equal(scene.image[scene.masks[k]], alone.image[scene.masks[k]])
            covered |= coverage
        # pixels outside every mask are untouched background
        outside = ~scene.masks.any(0)
        np.testing.assert_array_equal(scene.image[outside], background[outside])
        assert not (scene.masks.sum(0) > 1).any(), "masks overlap"


def test_every_object_stays_mostly_visible_and_masks_are_nonempty():
    for spec in _scenes():
        scene = render.render_scene(spec)
        for k, obj in enumerate(spec.objects):
            full = shapes.object_coverage(obj).sum()
            assert scene.masks[k].sum() >= world.MIN_VISIBLE_FRACTION * full > 0


def test_rendering_is_deterministic():
    a = [render.render_scene(s) for s in _scenes(10, seed=11)]
    b = [render.render_scene(s) for s in _scenes(10, seed=11)]
    for x, y in zip(a, b):
        assert x.spec == y.spec
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.masks, y.masks)
    c = render.render_scene(_scenes(1, seed=12)[0])
    assert not np.array_equal(a[0].image, c.image)


def test_held_out_kinds_never_appear_in_pretraining():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(1500):
        for obj in world.sample_pretraining_scene(rng).objects:
            assert not world.is_held_out(obj.kind), obj.kind
            seen.add(obj.kind)
    for concept in world.HELD_OUT:
        assert world.is_held_out(concept.kind)
        assert concept.kind not in world.PRETRAINING_KINDS
        assert not world.is_held_out(concept.companion)
        # the class word is a shape the base model does see
        assert any(k.shape == concept.class_word for k in world.PRETRAINING_KINDS)
    # the sampler explores the allowed world rather than a corner of it
    assert len(seen) > 0.8 * len(world.PRETRAINING_KINDS)


def test_captions_name_every_object_and_the_background():
    spec = world.SceneSpec(
        "grass",
        (
            world.PlacedObject(world.ObjectKind("ring", "red"), 20, 20, 9),
            world.PlacedObject(world.ObjectKind("star", "blue", "striped"), 44, 44, 9),
        ),
    )
    assert spec.caption() == "a red ring and a blue striped star on grass"
    assert spec.caption((1, 0)) == "a blue striped star and a red ring on grass"
    three = world.SceneSpec("sky", spec.objects + (world.PlacedObject(world.ObjectKind("cross", "orange"), 10, 50, 8),))
    assert three.caption() == "a red ring, a blue striped star and an orange cross on sky"


def test_personalization_set_pairs_the_concept_with_the_same_companion():
    cs = tinyworld.personalization_set("dotstar", seed=0)
    assert isinstance(cs, ConceptSet) and len(cs.images) == 5
    target, companion = cs.concepts
    assert (target.name, target.token, target.class_word) == ("dotstar", "<dotstar>", "star")
    assert companion.name == "bluecircle"
    for img in cs.images:
        assert img.image.shape == (3, 64, 64) and img.image.dtype == torch.float32
        m_t, m_c = img.masks["dotstar"], img.masks["bluecircle"]
        assert m_t.sum() > 50 and m_c.sum() > 50 and (m_t * m_c).sum() == 0
        # the target's pixels are orange or dots, never the companion's blue
        pix = img.image[:, m_t.bool()]
        assert (pix[2] < 0.5).float().mean() > 0.6
    again = tinyworld.personalization_set("dotstar", seed=0)
    assert all(torch.equal(a.image, b.image) for a, b in zip(cs.images, again.images))
    other = tinyworld.personalization_set("dotstar", seed=1)
    assert not torch.equal(cs.images[0].image, other.images[0].image)
    prompts = tinyworld.personalization_prompts("dotstar", seed=0)
    assert prompts[0].startswith("a <bluecircle> circle and a <dotstar> star on ")


def test_bad_names_are_rejected_clearly():
    with pytest.raises(ValueError, match="unknown TinyWorld concept 'doll'"):
        tinyworld.personalization_set("doll")
    with pytest.raises(ValueError, match="unknown shape 'blob'"):
        tinyworld.make_scene([("blob", "red")])
    with pytest.raises(ValueError, match="unknown background"):
        tinyworld.make_scene([("star", "red")], background="moon")
