"""Identifier tokens: one text rule (``data.tokens``), applied alike by the validator, the
diffusers backend and the nodes (nodes/comfy_tokens.py imports ``check_token_text``)."""

from __future__ import annotations

import re

import pytest
import torch

from textloc_core.data.concepts import Concept, ConceptImage, ConceptSet
from textloc_core.data.tokens import check_token_text, is_plain_word, token_text_problem
from textloc_core.data.validation import ConceptSetError, validate_concept_set


@pytest.mark.parametrize("token", ["<doll1>", "<cat_figurine>", "<a-b>", "sks", "DOLL"])
def test_good_token_text(token):
    assert token_text_problem(token) is None
    check_token_text(token)


@pytest.mark.parametrize(
    "token, words",
    [
        ("", "is an empty token"),
        ("  ", "is an empty token"),
        ("<my doll>", "contains whitespace: a token must be one word, e.g. '<my>'"),
        ("<a/b>", "path separator or '..'"),
        ("<a\\b>", "path separator or '..'"),
        ("<..>", "path separator or '..'"),
        ("<doll.1>", "may only contain letters, digits"),
        ("embedding:doll", "may only contain letters, digits"),
        ("<d\x01>", "may only contain letters, digits"),
    ],
)
def test_bad_token_text_says_why_and_names_the_input(token, words):
    with pytest.raises(ValueError) as info:
        check_token_text(token, "token_widget")
    assert str(info.value).startswith(f"token_widget: {token!r} ") and words in str(info.value)


def test_plain_words():
    assert is_plain_word("doll") and is_plain_word("Bucket")
    assert not is_plain_word("<doll>") and not is_plain_word("doll1") and not is_plain_word("")


@pytest.mark.parametrize("token", ["<doll.1>", "<my doll>"])
def test_the_validator_and_the_diffusers_backend_apply_the_same_rule(tiny_bundle, token):
    problem = token_text_problem(token)
    mask = torch.zeros(8, 8)
    mask[2:6, 2:6] = 1
    concepts = ConceptSet([Concept("doll", token, "doll")], [ConceptImage(torch.rand(3, 8, 8), {"doll": mask})])
    with pytest.raises(ConceptSetError) as info:
        validate_concept_set(concepts)
    assert info.value.problems == [f"token {token!r} of concept 'doll' {problem}"]
    with pytest.raises(ValueError, match=re.escape(problem)):
        tiny_bundle.text.check_token(token)
