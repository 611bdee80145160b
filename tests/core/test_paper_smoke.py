"""Smoke run on real photos: two images of the paper's bucket+doll pair at 32 px, every method."""

import pytest
import torch

from textloc_core.training.config import TrainConfig
from textloc_core.data.readers import read_paper_dataset
from textloc_core.training.loop import train


@pytest.mark.parametrize("method", ["hard", "soft", "none"])
def test_trains_on_two_paper_images_at_32px(tiny_bundle, paper_dataset, method):
    concepts = read_paper_dataset(paper_dataset, "bucket+doll", resolution=32)
    concepts.images = concepts.images[:2]
    assert [c.name for c in concepts.concepts] == ["bucket", "doll"]
    assert concepts.images[0].image.shape == (3, 32, 32)
    config = TrainConfig(method=method, steps=2, instance_batch=2, prior_images_per_class=2, prior_sampling_steps=2)
    result = train(tiny_bundle, concepts, config)
    assert result.steps_done == 2
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in result.history)
    assert (result.history[0]["attention"] > 0) == (method != "none")
    assert set(result.token_embeddings) == {c.token for c in concepts.concepts}
    assert result.prompts[0].count("<") == 2  # both tokens named: "photo of a <bucket> bucket and a <doll> doll"
