"""Shared evaluation steps: concept subsets, image scores, token maps on given images."""

from __future__ import annotations

import math

import pytest
import torch

from textloc_core.data.concepts import Concept, ConceptImage, ConceptSet
from textloc_core.evaluation import localization, metrics, scoring
from textloc_core.training.result import TrainResult


class MeanColour:
    def encode_image(self, images):
        return images.mean(dim=(2, 3))

    def encode_text(self, texts):
        table = {"red": [1.0, 0, 0], "green": [0, 1.0, 0]}
        return torch.tensor([[sum(table.get(w, [0, 0, 0])[i] for w in t.split()) for i in range(3)] for t in texts])


def _pair_set() -> ConceptSet:
    ones, zeros = torch.ones(8, 8), torch.zeros(8, 8)
    images = [ConceptImage(torch.rand(3, 8, 8), {"doll": ones, "bucket": zeros + 1}, f"img{i}") for i in range(3)]
    images.append(ConceptImage(torch.rand(3, 8, 8), {"bucket": ones}, "bucket only"))
    return ConceptSet([Concept("bucket", "<bucket>", "bucket"), Concept("doll", "<doll>", "doll")], images)


def test_only_concepts_keeps_photos_and_drops_other_masks():
    full = _pair_set()
    single = scoring.only_concepts(full, ["doll"])
    assert [c.name for c in single.concepts] == ["doll"]
    assert len(single.images) == 3  # the bucket-only photo has nothing to learn the doll from
    assert all(set(item.masks) == {"doll"} for item in single.images)
    assert single.images[0].image is full.images[0].image
    with pytest.raises(ValueError, match=r"\['cat'\] are not in this set"):
        scoring.only_concepts(full, ["cat"])


def test_image_scores_match_the_metrics_and_kid_needs_enough_images():
    red = torch.zeros(6, 3, 4, 4)
    red[:, 0] = 1.0
    refs = red.clone()
    scores = scoring.image_scores(MeanColour(), red, ["a <x> red"] * 6, refs, kid_subset_size=5)
    assert scores["clip_i"] == pytest.approx(1.0) and scores["clip_t"] == pytest.approx(1.0)
    assert abs(scores["kid"]) < 1e-6
    few = scoring.image_scores(MeanColour(), red[:3], ["green"] * 3, refs, kid_subset_size=5)
    assert few["clip_t"] == pytest.approx(0.0) and math.isnan(few["kid"])


def test_attention_on_images_shapes_presence_and_determinism(tiny_bundle):
    emb = tiny_bundle.text.initial_embedding("doll")
    result = TrainResult(kv_deltas={}, token_embeddings={"<doll>": emb}, history=[], stopped_early=False, steps_done=0)
    images = torch.rand(3, 3, 16, 16)
    prompts = ["a <doll> doll", "a doll", "a red <doll> doll on grass"]
    maps = localization.attention_on_images(tiny_bundle, [result], images, prompts, ["<doll>"], timesteps=(300, 700))
    assert maps.shape == (3, 1, 8, 8)  # "all" levels: the finest attention grid of an 8x8 latent
    assert 0 <= maps.min() and maps.max() <= 1
    assert maps[1].abs().max() == 0  # the token is not in prompt 2: no map
    assert maps[0].max() > 0 and maps[2].max() > 0
    again = localization.attention_on_images(tiny_bundle, [result], images, prompts, ["<doll>"], timesteps=(300, 700))
    torch.testing.assert_close(maps, again)
    coarse = localization.attention_on_images(
        tiny_bundle, [result], images[:1], prompts[:1], ["<doll>"], map_levels=(2,)
    )
    assert coarse.shape == (1, 1, 4, 4)
    iou = metrics.attention_iou(maps[0, 0], torch.ones(16, 16))
    assert 0 < iou.item() <= 1


def test_attention_on_images_rejects_unknown_tokens(tiny_bundle):
    with pytest.raises(ValueError, match="not identifier tokens"):
        localization.attention_on_images(tiny_bundle, [], torch.rand(1, 3, 16, 16), ["a <cat> cat"], ["<cat>"])
