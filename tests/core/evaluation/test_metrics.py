"""Metrics against hand-computed values on hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from textloc_core.attention.maps import normalize_maps
from textloc_core.evaluation import features, judge_scores, metrics
from textloc_core.evaluation.judge_scores import ExpectedScene, Judgement


class MeanColourFeatures:
    """A deterministic feature model: an image's feature is its mean RGB; a text's feature is
    a fixed vector per word. Enough to compute every expected value by hand."""

    words = {"red": [1.0, 0.0, 0.0], "green": [0.0, 1.0, 0.0], "blue": [0.0, 0.0, 1.0]}

    def __init__(self):
        self.seen_texts: list[str] = []

    def encode_image(self, images):
        return images.mean(dim=(2, 3))

    def encode_text(self, texts):
        self.seen_texts.extend(texts)
        return torch.tensor(
            [[sum(self.words.get(w, [0.0] * 3)[i] for w in t.split()) for i in range(3)] for t in texts]
        )


def solid(colours):
    """(N, 3, 8, 8) images of solid colours."""
    return torch.tensor(colours, dtype=torch.float32).view(-1, 3, 1, 1).expand(-1, 3, 8, 8).clone()


RED, GREEN, BLUE = [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]


# ---------------------------------------------------------------- CLIP-I / CLIP-T


def test_clip_i_identical_images_is_one_and_orthogonal_is_zero():
    model = MeanColourFeatures()
    assert metrics.clip_i(model, solid([RED, RED]), solid([RED])) == pytest.approx(1.0)
    assert metrics.clip_i(model, solid([RED]), solid([GREEN, BLUE])) == pytest.approx(0.0)


def test_clip_i_averages_every_generated_reference_pair():
    model = MeanColourFeatures()
    # pairs: (R,R)=1, (R,G)=0, (RG,R)=1/sqrt2, (RG,G)=1/sqrt2 -> mean (1 + sqrt2) / 4
    yellow = [1.0, 1.0, 0.0]
    value = metrics.clip_i(model, solid([RED, yellow]), solid([RED, GREEN]))
    assert value == pytest.approx((1 + math.sqrt(2)) / 4)


def test_clip_t_pairs_each_image_with_its_prompt_and_strips_the_token():
    model = MeanColourFeatures()
    images = solid([RED, GREEN])
    score = metrics.clip_t(model, images, ["a <red1> red", "<g> blue"], identifier_tokens=None)
    assert score == pytest.approx(0.5)  # cos(R, red) = 1, cos(G, blue) = 0
    assert model.seen_texts == ["a red", "blue"]


def test_clip_t_single_prompt_for_all_images():
    model = MeanColourFeatures()
    assert metrics.clip_t(model, solid([RED, GREEN]), "red") == pytest.approx(0.5)


def test_clip_t_rejects_prompt_count_mismatch():
    with pytest.raises(ValueError, match="3 prompts for 2 images"):
        metrics.clip_t(MeanColourFeatures(), solid([RED, GREEN]), ["red"] * 3)


@pytest.mark.parametrize(
    "prompt, tokens, expected",
    [
        ("a <doll1> doll in the desert", None, "a doll in the desert"),
        ("<doll1> doll in the desert", None, "doll in the desert"),
        ("<b1> bucket and <d1> doll , beside a window", None, "bucket and doll, beside a window"),
        ("photo of a sks dog", ["sks"], "photo of a dog"),
        ("a <a10> and a <a1> toy", ["<a1>", "<a10>"], "a and a toy"),
        ("a watercolor painting of <doll1>", ["<doll1>"], "a watercolor painting of"),
    ],
)
def test_strip_identifier(prompt, tokens, expected):
    assert metrics.strip_identifier(prompt, tokens) == expected


def test_images_must_be_channels_first():
    with pytest.raises(ValueError, match="movedim"):
        metrics.clip_i(MeanColourFeatures(), torch.rand(2, 8, 8, 3), solid([RED]))


# ---------------------------------------------------------------- KID


class Flatten(nn.Module):
    """Deterministic feature extractor: mean colour per channel."""

    def forward(self, images):
        return images.mean(dim=(2, 3))


def test_kid_identical_sets_near_zero_and_shifted_sets_positive():
    generator = torch.Generator().manual_seed(0)
    references = torch.rand(10, 3, 8, 8, generator=generator)
    same = metrics.kid(references.clone(), references, Flatten(), subset_size=5, subsets=50)
    shifted = metrics.kid((references + 0.5).clamp(0, 1.5), references, Flatten(), subset_size=5, subsets=50)
    assert abs(same.mean) < 0.05
    assert shifted.mean > 10 * max(abs(same.mean), 1e-3)


def test_kid_matches_hand_computed_unbiased_mmd_at_full_subset():
    # With subset_size == N, every subset is the whole set: KID is the unbiased MMD^2 with the
    # cubic kernel k(x, y) = (x.y / d + 1)^3, computable by hand for 1-d features.
    real = solid([[0.0, 0, 0], [0.3, 0.3, 0.3], [0.6, 0.6, 0.6]])
    fake = solid([[0.9, 0.9, 0.9], [0.3, 0.3, 0.3], [1.0, 1.0, 1.0]])
    x = real.mean(dim=(2, 3)).double()
    y = fake.mean(dim=(2, 3)).double()
    k = lambda a, b: (a @ b.T / 3 + 1) ** 3
    m = 3
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    expected = ((kxx.sum() - kxx.trace()) + (kyy.sum() - kyy.trace())) / (m * (m - 1)) - 2 * kxy.sum() / m**2
    result = metrics.kid(fake, real, Flatten(), subset_size=3, subsets=4)
    assert result.mean == pytest.approx(expected.item(), rel=1e-6)
    assert result.std == pytest.approx(0.0, abs=1e-9)


def test_kid_is_reproducible_and_accepts_a_feature_model():
    generator = torch.Generator().manual_seed(1)
    a, b = torch.rand(8, 3, 8, 8, generator=generator), torch.rand(8, 3, 8, 8, generator=generator)
    first = metrics.kid(a, b, MeanColourFeatures(), seed=3)
    second = metrics.kid(a, b, MeanColourFeatures(), seed=3)
    assert first == second


def test_kid_needs_subset_size_images():
    with pytest.raises(ValueError, match="generated: 3 images but KID subset_size is 5"):
        metrics.kid(torch.rand(3, 3, 8, 8), torch.rand(6, 3, 8, 8), Flatten())


def test_inception_features_shape_with_random_weights():
    inception = features.inception_from_file(None)
    out = inception(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 2048)


# ---------------------------------------------------------------- attention IoU


def test_iou_of_known_masks():
    attention = torch.zeros(1, 4, 4)
    attention[0, :2, :2] = 1.0  # top-left 2x2 block is hot
    mask = torch.zeros(1, 4, 4)
    mask[0, :2, :] = 1.0  # top half
    # predicted 4 cells, target 8 cells, overlap 4 -> IoU 0.5
    assert metrics.attention_iou(attention, mask).tolist() == [pytest.approx(0.5)]


def test_iou_resizes_mask_to_map_grid_and_ignores_scale():
    attention = torch.zeros(2, 4, 4)
    attention[:, 1:3, 1:3] = 0.02  # raw probabilities are tiny; min-max makes them 1
    mask = torch.zeros(64, 64)
    mask[16:48, 16:48] = 1.0
    assert metrics.attention_iou(attention, mask).tolist() == [pytest.approx(1.0)] * 2


def test_iou_threshold_choice_changes_prediction():
    attention = torch.tensor([[[0.0, 0.4], [0.7, 1.0]]])
    mask = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])
    assert metrics.attention_iou(attention, mask, threshold=0.5).item() == pytest.approx(1.0)
    assert metrics.attention_iou(attention, mask, threshold=0.3).item() == pytest.approx(2 / 3)


def test_otsu_splits_a_bimodal_map():
    attention = torch.full((1, 8, 8), 0.1)
    attention[0, :, :3] = 0.9
    attention[0, 0, 0] = 0.0
    attention[0, 0, 7] = 1.0
    mask = torch.zeros(1, 8, 8)
    mask[0, :, :3] = 1.0
    cut = metrics.otsu_threshold(normalize_maps(attention)[0])
    assert 0.1 < cut <= 0.9
    iou = metrics.attention_iou(attention, mask, threshold="otsu").item()
    # errors: the 0.0 pixel inside the mask (missed) and the 1.0 pixel outside it (false hit)
    assert iou == pytest.approx(23 / 25)


def test_iou_rejects_empty_mask_and_bad_threshold():
    with pytest.raises(ValueError, match="mask 0: empty"):
        metrics.attention_iou(torch.rand(1, 4, 4), torch.zeros(1, 16, 16))
    with pytest.raises(ValueError, match="threshold"):
        metrics.attention_iou(torch.rand(1, 4, 4), torch.ones(1, 4, 4), threshold=1.5)


# ---------------------------------------------------------------- judge-based scores

RED_STAR = {"shape": "star", "colour": "red", "texture": "dotted"}
BLUE_RING = {"shape": "ring", "colour": "blue", "texture": "plain"}
GREEN_BOX = {"shape": "square", "colour": "green", "texture": "plain"}


def test_judge_scores_fidelity_leakage_alignment():
    spec = ExpectedScene(targets=[RED_STAR], others=[GREEN_BOX], background="sky", unprompted=[BLUE_RING])
    judgements = [
        Judgement([dict(RED_STAR), dict(GREEN_BOX)], "sky"),  # perfect
        Judgement([dict(RED_STAR, texture="plain"), dict(BLUE_RING)], "sky"),  # wrong texture, leak
        Judgement([dict(RED_STAR)], "grass"),  # target only
        Judgement([], None),  # nothing
    ]
    scores = judge_scores.judge_scores(judgements, spec)
    assert scores.target_fidelity == pytest.approx(2 / 4)
    assert scores.leakage == pytest.approx(1 / 4)
    assert scores.prompt_alignment == pytest.approx((1 + 0.5 + 0 + 0) / 4)
    assert scores.n == 4


def test_judge_scores_partial_specs_and_nan_when_nothing_to_score():
    loose_leak = {"shape": "ring"}  # any ring counts as leakage, whatever its colour
    spec = ExpectedScene(targets=[RED_STAR], unprompted=[loose_leak])
    scores = judge_scores.judge_scores([Judgement([dict(BLUE_RING, colour="red")])], spec)
    assert scores.leakage == 1.0 and scores.target_fidelity == 0.0
    assert math.isnan(scores.prompt_alignment)


def test_judge_scores_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="2 expected scenes for 1 judgements"):
        judge_scores.judge_scores([Judgement([])], [ExpectedScene([RED_STAR])] * 2)


def test_partial_detections_bind_attributes_through_the_shape():
    # the TinyWorld judge reports (colour, shape) and (texture, shape) pairs separately
    judgement = Judgement(
        [
            {"colour": "red", "shape": "star"},
            {"texture": "dotted", "shape": "star"},
            {"colour": "blue", "shape": "ring"},
            {"texture": "plain", "shape": "ring"},
        ]
    )
    assert judge_scores.object_present(judgement, RED_STAR)
    assert judge_scores.object_present(judgement, BLUE_RING)
    # a dotted ring is not there although "dotted" and "ring" each are
    assert not judge_scores.object_present(judgement, {"shape": "ring", "texture": "dotted"})
    assert not judge_scores.object_present(judgement, {"shape": "star", "colour": "blue"})
