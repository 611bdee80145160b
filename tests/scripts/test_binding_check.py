"""scripts/binding_check.py: the prompts of its conditions, and how it counts a colour bound to
the wrong object."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def check(load_script):
    return load_script("binding_check")


def test_each_condition_names_the_concept_its_own_way(check):
    from textloc_core.tinyworld import ObjectKind
    from textloc_core.tinyworld.world import held_out_concept

    concept, other = held_out_concept("dotstar"), ObjectKind("triangle", "red")
    named = {naming: check.prompt_for(concept, "<dotstar>", naming, other) for _, naming, _ in check.CONDITIONS}
    assert named == {
        "token": "a <dotstar> star and a red triangle on night",
        "class word": "a star and a red triangle on night",
        "words": "an orange dotted star and a red triangle on night",
    }
    # strength 0 keeps the token's embedding; the base rows apply no adapter at all
    assert ("token only", "token", 0.0) in check.CONDITIONS
    assert all(strength is None for name, _, strength in check.CONDITIONS if name.startswith("base"))


def test_counts_tell_the_prompted_object_from_one_in_the_concepts_colour(check):
    from textloc_core.evaluation.judge_scores import Judgement
    from textloc_core.tinyworld import ObjectKind
    from textloc_core.tinyworld.world import held_out_concept

    concept, other = held_out_concept("dotstar"), ObjectKind("triangle", "red")
    star = {"colour": "orange", "shape": "star"}
    judgements = [
        Judgement([star, {"colour": "red", "shape": "triangle"}], "night"),  # both, as prompted
        Judgement([{"colour": "orange", "shape": "triangle"}], "night"),  # the concept's colour moved
        Judgement([star], "night"),  # the concept alone
    ]
    assert check.counts(judgements, concept, other) == {
        "concept": 2,
        "other": 1,
        "other_shape": 2,
        "other_shape_concept_colour": 1,
        "both": 1,
    }
