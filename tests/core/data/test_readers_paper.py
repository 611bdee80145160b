"""The paper's published dataset (../shared/paper-dataset, never copied into the repo) reads and validates.

Skips loudly (conftest ``paper_dataset``) when the data is absent; set TEXTLOC_PAPER_DATASET.
"""

from __future__ import annotations

import pytest
import torch

from textloc_core.data.masks import mask_coverage
from textloc_core.data.readers import find_paper_dataset, paper_prompts, read_concepts, read_paper_dataset
from textloc_core.data.validation import validate_concept_set

PAIRS = ["bucket+doll", "cup+cat_figurine", "helmet+headphone", "pot+penbag"]
SINGLES = sorted({name for pair in PAIRS for name in pair.split("+")})


@pytest.mark.parametrize("pair", PAIRS)
def test_every_pair_reads_and_validates(paper_dataset, pair):
    cs = read_paper_dataset(paper_dataset, pair, resolution=64)
    first, second = pair.split("+")
    assert [c.name for c in cs.concepts] == [first, second]
    assert [c.token for c in cs.concepts] == [f"<{first}>", f"<{second}>"]
    assert len(cs.images) == 5
    validate_concept_set(cs, resolution=64)
    for item in cs.images:
        assert item.image.shape == (3, 64, 64)
        assert item.mask_sources[first].startswith(f"{pair}/mask_1/")
        one, two = item.masks[first], item.masks[second]
        # Each object is a real part of the photo, and the two masks mark different objects.
        assert 0.005 < mask_coverage(one) < 0.6 and 0.005 < mask_coverage(two) < 0.6
        overlap = (one * two).sum() / torch.minimum(one.sum(), two.sum())
        assert overlap < 0.2


def masked_colour(cs, name) -> torch.Tensor:
    """Mean RGB of the pixels inside ``name``'s masks over the set."""
    total, count = torch.zeros(3), torch.tensor(0.0)
    for item in cs.images:
        total += (item.image * item.masks[name]).sum(dim=(1, 2))
        count += item.masks[name].sum()
    return total / count


@pytest.mark.parametrize("pair", PAIRS)
def test_mask_1_marks_the_first_named_object(paper_dataset, pair):
    """Mapping check on real data: what mask_1 covers looks like the first object's own
    reference photos (single_concept/<first>), and mask_2 like the second's."""
    names = pair.split("+")
    cs = read_paper_dataset(paper_dataset, pair, resolution=32)
    refs = {name: masked_colour(read_paper_dataset(paper_dataset, name, resolution=32), name) for name in names}
    for name, other in (names, names[::-1]):
        colour = masked_colour(cs, name)
        assert (colour - refs[name]).norm() < (colour - refs[other]).norm()


def test_every_single_concept_reads_and_validates(paper_dataset):
    for name in SINGLES:
        cs = read_paper_dataset(paper_dataset, name, resolution=32)
        assert [c.name for c in cs.concepts] == [name] and len(cs.images) == 5
        validate_concept_set(cs, resolution=32)
    assert read_paper_dataset(paper_dataset, "cat_figurine", resolution=32).concepts[0].class_word == "cat figurine"


def test_full_resolution_photos_are_rgb_with_binary_masks(paper_dataset):
    folder = paper_dataset / "multi_concept" / "bucket+doll"
    cs = read_concepts(folder)  # the layout is recognised from the folder itself
    item = cs.images[0]
    assert item.image.shape == (3, 512, 512) and item.image.dtype == torch.float32
    assert set(item.masks["doll"].unique().tolist()) == {0.0, 1.0}
    assert cs.data_hash() == read_concepts(folder).data_hash()


def test_prompts_fill_the_token_slots(paper_dataset):
    prompts = paper_prompts(paper_dataset, "bucket+doll", ["<bucket>", "<doll>"])
    assert len(prompts) == 10 and all("<bucket> bucket" in p and "<doll> doll" in p for p in prompts)
    assert len(paper_prompts(paper_dataset, "doll")) == 10
    with pytest.raises(ValueError, match="slot"):
        paper_prompts(paper_dataset, "bucket+doll", ["<bucket>"])


def test_unknown_entries_and_the_locator(paper_dataset, monkeypatch):
    with pytest.raises(ValueError, match="has no 'spoon'; available: .*bucket\\+doll"):
        read_paper_dataset(paper_dataset, "spoon")
    with pytest.raises(ValueError, match="folder name"):
        read_paper_dataset(paper_dataset, "../single_concept/doll")
    monkeypatch.setenv("TEXTLOC_PAPER_DATASET", str(paper_dataset))
    assert find_paper_dataset() == paper_dataset
    monkeypatch.setenv("TEXTLOC_PAPER_DATASET", str(paper_dataset / "missing"))
    assert find_paper_dataset() is None
