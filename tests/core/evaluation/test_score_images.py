"""scoring.score_images / score_report: the scoring behind the TextLoc Score Images node."""

from __future__ import annotations

import math

import pytest
import torch
from test_evaluation import MeanColour  # mean colour vs colour words: scores known by hand

from textloc_core.evaluation import scoring
from textloc_core.stop import Cancelled


def _solid(colour, n):
    return torch.tensor(colour, dtype=torch.float32).view(1, 3, 1, 1).expand(n, 3, 8, 8).clone()


def test_identical_images_score_clip_i_one_and_prompt_tokens_are_stripped():
    red = _solid([1.0, 0, 0], 3)
    scores = scoring.score_images(MeanColour(), red, red, "a <tw1> red thing")
    assert scores["clip_i"] == pytest.approx(1.0)
    assert scores["clip_t"] == pytest.approx(1.0)  # "<tw1>" would not change MeanColour, "red" matters
    assert math.isnan(scores["kid"])  # 3 images < subset size 5
    assert scores["iou"] == -1.0
    green = scoring.score_images(MeanColour(), red, _solid([0, 1.0, 0], 3), "a green thing")
    assert green["clip_i"] == pytest.approx(0.0) and green["clip_t"] == pytest.approx(0.0)


def test_kid_is_finite_with_enough_images_and_iou_scores_maps_against_masks():
    torch.manual_seed(0)
    images, references = torch.rand(6, 3, 8, 8), torch.rand(6, 3, 8, 8)
    mask = torch.zeros(8, 8)
    mask[:4] = 1
    scores = scoring.score_images(
        MeanColour(),
        images,
        references,
        "red",
        kid_subset_size=5,
        attention_maps=torch.stack([mask, 1 - mask]),
        target_masks=mask,
    )
    assert math.isfinite(scores["kid"])
    assert scores["iou"] == pytest.approx(0.5)  # one map on the target (1), one beside it (0)
    with pytest.raises(ValueError, match="give both"):
        scoring.score_images(MeanColour(), images, references, "red", attention_maps=mask[None])


def test_report_is_a_markdown_table_naming_missing_scores():
    report = scoring.score_report(
        {"clip_i": 0.9, "clip_t": 0.25, "kid": float("nan"), "iou": -1.0},
        n_images=3,
        n_references=8,
        prompt="a <tw1> star",
        kid_subset_size=5,
    )
    assert "| CLIP-I | 0.9000 |" in report and "| CLIP-T | 0.2500 |" in report
    assert "needs >= 5" in report and "no attention maps" in report
    assert "'a star'" in report and "nan" not in report


def test_missing_clip_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        scoring.load_feature_model(str(tmp_path / "no_clip"))
    with pytest.raises(ValueError, match="feature_model: empty"):
        scoring.load_feature_model("  ")


def test_scoring_polls_per_chunk(monkeypatch):
    monkeypatch.setattr(scoring, "SCORE_CHUNK", 2)
    images = torch.rand(6, 3, 8, 8)
    polls = []

    def stop() -> bool:  # says stop from its third poll on
        polls.append(1)
        return len(polls) > 2

    with pytest.raises(Cancelled, match="generated image 4 of 6"):
        scoring.score_images(MeanColour(), images, images, "red", should_stop=stop)
    plain = scoring.score_images(MeanColour(), images, images, "red")
    chunked = scoring.score_images(MeanColour(), images, images, "red", should_stop=lambda: False)
    assert plain.keys() == chunked.keys()


@pytest.mark.parametrize(
    "calls, phase",
    [
        (6, "prompt 0 of 6"),
        (8, "prompt 4 of 6"),
        (10, "during KID at reference image 0 of 6"),
        (14, "during KID at generated image 2 of 6"),
        (16, "before KID's subset statistics"),
    ],
)
def test_cancel_is_polled_in_every_phase_of_scoring(monkeypatch, calls, phase):
    """Prompts are encoded and KID's features taken in chunks too, each chunk after a poll, so
    a large batch stops within one chunk whichever phase it is in."""
    from textloc_core.evaluation import metrics

    monkeypatch.setattr(scoring, "SCORE_CHUNK", 2)
    monkeypatch.setattr(metrics, "KID_CHUNK", 2)
    torch.manual_seed(0)
    images = torch.rand(6, 3, 8, 8)
    polls = []

    def should_stop():
        polls.append(1)
        return len(polls) > calls

    with pytest.raises(Cancelled, match=phase):
        scoring.image_scores(MeanColour(), images, ["red"] * 6, images, kid_subset_size=5, should_stop=should_stop)
    assert len(polls) == calls + 1
    polls.clear()
    finished = scoring.image_scores(
        MeanColour(), images, ["red"] * 6, images, kid_subset_size=5, should_stop=lambda: bool(polls.append(1))
    )
    assert (
        math.isfinite(finished["kid"]) and len(polls) == 17
    )  # 3 + 3 image chunks, 3 prompt chunks, before KID, 3 + 3 KID chunks, 1
