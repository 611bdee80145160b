"""Smoke run on real photos: two images of the paper's bucket+doll pair at 32 px, every method."""

import pytest
import torch

from textloc_core.data.readers import read_paper_dataset
from textloc_core.training.config import TrainConfig
from textloc_core.training.loop import train


@pytest.mark.parametrize("method", ["hard", "soft", "none"])
def test_trains_on_two_paper_images_at_32px(tiny_bundle, paper_dataset, method):
    concepts = read_paper_dataset(paper_dataset, "bucket+doll", resolution=32)
    concepts.images = concepts.images[:2]
    assert [c.name for c in concepts.concepts] == ["bucket", "doll"]
    assert concepts.images[0].image.shape == (3, 32, 32)
    config = TrainConfig(guidance=method, steps=2, instance_batch=2, prior_images=2, prior_sampling_steps=2)
    result = train(tiny_bundle, concepts, config)
    assert result.steps_done == 2
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in result.history)
    assert (result.history[0]["attention"] > 0) == (method != "none")
    assert set(result.token_embeddings) == {c.token for c in concepts.concepts}
    assert result.prompts[0].count("<") == 2  # both tokens named: "photo of a <bucket> bucket and a <doll> doll"


@pytest.mark.parametrize("pair", ["bucket+doll", "cup+cat_figurine", "helmet+headphone", "pot+penbag"])
def test_every_paper_pair_trains_with_default_init(tiny_bundle, paper_dataset, pair):
    """Issue 14: class words of several words ("cat figurine") start from the mean of their
    pieces' embeddings when init_word is left empty; default settings train every pair."""
    concepts = read_paper_dataset(paper_dataset, pair, resolution=32)
    concepts.images = concepts.images[:1]
    text = tiny_bundle.text
    for concept in concepts.concepts:
        assert concept.init_word is None
        pieces = text._pieces(concept.class_word)
        expected = text.encoders[0].embedding.weight[pieces].detach().float().mean(0, keepdim=True)
        assert torch.allclose(text.initial_embedding(concept.initializer), expected)
    result = train(tiny_bundle, concepts, TrainConfig(steps=1, prior_images=1, prior_sampling_steps=1))
    assert result.steps_done == 1


def test_cat_figurine_is_the_mean_of_cat_and_figurine(tiny_bundle):
    text = tiny_bundle.text
    assert len(text._pieces("cat figurine")) >= 2
    rows = (
        torch.cat([text.initial_embedding(w) for w in ("cat", "figurine")])
        if len(text._pieces("figurine")) == 1
        else None
    )
    start = text.initial_embedding("cat figurine", what="class_word")
    assert start.shape == (1, text.embedding_dim) and torch.isfinite(start).all()
    if rows is not None:
        assert torch.allclose(start, rows.mean(0, keepdim=True))


def test_a_word_without_pieces_names_the_input_at_fault(tiny_bundle):
    from textloc_core.data.concepts import Concept

    empty_class = Concept("x", "<x1>", class_word=" ", init_word=None)
    with pytest.raises(ValueError, match=r"^class_word: ' ' has no vocabulary pieces"):
        tiny_bundle.text.initial_embedding(empty_class.initializer, what=empty_class.initializer_input)
    assert Concept("x", "<x1>", "cat figurine", init_word="toy").initializer_input == "init_word"
