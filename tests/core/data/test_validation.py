"""validate_concept_set: each bad input is named with its fix, all problems reported at once."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from textloc_core.data.concepts import Concept, ConceptImage, ConceptSet
from textloc_core.data.validation import ConceptSetError, validate_concept_set

DOLL = Concept("doll", "<doll>", "doll")
BUCKET = Concept("bucket", "<bucket>", "bucket")


def mask(h=8, w=8, rows=slice(2, 6), cols=slice(2, 6)):
    plane = torch.zeros(h, w)
    plane[rows, cols] = 1
    return plane


def good_set(count=4) -> ConceptSet:
    images = [
        ConceptImage(
            torch.rand(3, 8, 8),
            {"doll": mask(), "bucket": mask(cols=slice(0, 2))},
            f"images/{i}.png",
            {"doll": f"masks/doll/{i}.png", "bucket": f"masks/bucket/{i}.png"},
        )
        for i in range(count)
    ]
    return ConceptSet([DOLL, BUCKET], images)


def problems_of(cs, **kwargs) -> list[str]:
    with pytest.raises(ConceptSetError) as info:
        validate_concept_set(cs, **kwargs)
    assert isinstance(info.value, ValueError)
    return info.value.problems


def test_a_good_set_passes():
    validate_concept_set(good_set(), resolution=64)


def test_empty_mask_names_index_file_concept_and_fix():
    cs = good_set()
    cs.images[3].masks["doll"] = torch.zeros(8, 8)
    assert problems_of(cs) == [
        "mask 3 of concept 'doll' (masks/doll/3.png) is empty: paint the doll in the mask editor or drop image 3"
    ]


def test_all_white_mask_is_meaningless_for_localization():
    cs = good_set()
    cs.images[1].masks["bucket"] = torch.ones(8, 8)
    (problem,) = problems_of(cs)
    assert problem.startswith("mask 1 of concept 'bucket' (masks/bucket/1.png) covers 100.0% of the photo")
    assert "localization is meaningless" in problem and "invert" in problem


def test_mask_size_mismatch():
    cs = good_set()
    cs.images[2].masks["doll"] = mask(4, 4, slice(1, 2), slice(1, 2))
    (problem,) = problems_of(cs)
    assert "mask 2 of concept 'doll' (masks/doll/2.png) is 4x4 but image 2 is 8x8" in problem


def test_mask_of_undefined_concept_and_concept_without_images():
    cs = good_set()
    cs.concepts.append(Concept("cat", "<cat>", "cat"))
    for item in cs.images:
        item.masks["kat"] = item.masks.pop("bucket")
        item.mask_sources["kat"] = "masks/kat/x.png"
    found = problems_of(cs)
    assert any("mask 0 of concept 'kat' (masks/kat/x.png) belongs to no defined concept" in p for p in found)
    assert "concept 'cat' has no images: give at least one photo with a mask of the cat" in found
    assert any("concept 'bucket' has no images" in p for p in found)


def test_image_without_masks_and_set_without_images():
    cs = good_set(1)
    cs.images[0].masks.clear()
    assert "image 0 (images/0.png) has no mask" in problems_of(cs)[0]
    assert "the concept set has no images: add photos with masks" in problems_of(ConceptSet([DOLL], []))


def test_duplicate_names_and_tokens_ignore_case():
    cs = good_set()
    cs.concepts[1] = Concept("Doll", "<DOLL>", "bucket")
    found = problems_of(cs)
    assert "two concepts are named 'Doll': give each concept its own name" in found
    assert "concepts 'doll' and 'Doll' share the token '<DOLL>': each concept needs its own new token" in found


@pytest.mark.parametrize(
    "token, words",
    [
        ("doll", "is a plain word: the identifier must be new to the model, e.g. '<doll>'"),
        ("<my doll>", "contains whitespace"),
        ("<a/b>", "path separator or '..'"),
        ("<..>", "path separator or '..'"),
        ("", "empty token"),
    ],
)
def test_bad_tokens(token, words):
    cs = good_set()
    cs.concepts[0] = dataclasses.replace(DOLL, token=token)
    found = problems_of(cs)
    assert len(found) == 1 and words in found[0]


@pytest.mark.parametrize("name", ["../doll", "a/b", "c\\d", "", " doll"])
def test_names_that_would_leave_a_folder(name):
    cs = good_set()
    cs.concepts[0] = dataclasses.replace(DOLL, name=name)
    for item in cs.images:
        item.masks[name] = item.masks.pop("doll")
    assert any("concept name" in problem for problem in problems_of(cs))


def test_vocabulary_check_is_reported_with_the_concept():
    def known_to_clip(token):
        if token == "<doll>":
            raise ValueError("is already in the vocabulary; pick another token")

    (problem,) = problems_of(good_set(), vocabulary_check=known_to_clip)
    assert problem == "token '<doll>' of concept 'doll': is already in the vocabulary; pick another token"


def test_images_of_different_sizes_need_a_resolution():
    cs = good_set()
    cs.images[2] = ConceptImage(torch.rand(3, 16, 8), {"doll": mask(16, 8)}, "images/2.png")
    assert any("different sizes (8x8 (image 0), 8x16 (image 2))" in p for p in problems_of(cs))
    validate_concept_set(cs, resolution=64)
    assert any("multiple of 8" in p for p in problems_of(cs, resolution=100))


def test_masks_are_checked_as_training_sees_them_after_the_crop():
    # A wide photo whose doll sits at the far left: the centre square does not contain it.
    cs = good_set(1)
    cs.images[0] = ConceptImage(torch.rand(3, 8, 32), {"doll": mask(8, 32, slice(2, 6), slice(0, 4))}, "images/0.png")
    cs.concepts = [DOLL]
    validate_concept_set(cs)  # as given, the mask is fine
    (problem,) = problems_of(cs, resolution=8)
    assert problem.startswith("mask 0 of concept 'doll' is empty after centre-cropping to 8x8")
    assert "turn off centre cropping" in problem
    validate_concept_set(cs, resolution=8, center_crop=False)  # stretched, the doll stays
    # A mask that fills the centre square is meaningless there too.
    cs.images[0].masks["doll"] = mask(8, 32, slice(0, 8), slice(12, 20))
    assert "covers 100.0% of the photo after centre-cropping to 8x8" in problems_of(cs, resolution=8)[0]


def test_bad_pixel_values_and_shapes():
    cs = good_set()
    cs.images[0].image = cs.images[0].image * 255
    cs.images[1].image = torch.rand(4, 8, 8)
    cs.images[2].masks["doll"] = mask() * 2
    found = problems_of(cs)
    assert any(p.startswith("image 0 (images/0.png) must be float values in [0, 1]") for p in found)
    assert any(p.startswith("image 1 (images/1.png) has shape (4, 8, 8)") for p in found)
    assert any(p.startswith("mask 2 of concept 'doll' (masks/doll/2.png) has values outside [0, 1]") for p in found)


def test_every_problem_is_listed_in_the_message():
    cs = good_set()
    cs.images[0].masks["doll"] = torch.zeros(8, 8)
    cs.concepts[1] = dataclasses.replace(BUCKET, token="bucket")
    with pytest.raises(ValueError) as info:
        validate_concept_set(cs)
    text = str(info.value)
    assert text.startswith("the concept set has 2 problems:")
    assert "mask 0 of concept 'doll'" in text and "token 'bucket' of concept 'bucket' is a plain word" in text


def test_a_long_list_of_problems_is_cut_in_the_message_but_kept_whole():
    cs = good_set(30)
    for item in cs.images:
        item.masks["doll"] = torch.zeros(8, 8)
    with pytest.raises(ConceptSetError) as info:
        validate_concept_set(cs)
    assert len(info.value.problems) == 30
    assert str(info.value).count("\n- ") == 21 and str(info.value).endswith("and 10 more of the same kinds")


def test_validation_does_not_change_the_set():
    cs = good_set()
    before = cs.data_hash()
    validate_concept_set(cs)
    assert cs.data_hash() == before
