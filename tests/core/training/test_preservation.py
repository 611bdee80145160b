"""The text-preservation term: its factor, its value, what it keeps, and where it is refused."""

import pytest
import torch

from textloc_core.training.config import TrainConfig
from textloc_core.training.loop import train
from textloc_core.training.preservation import (
    COMMON_WORDS,
    PreservationAnchors,
    anchor_prompts,
    build_anchors,
    second_moment_factor,
)


def _config(**kw):
    base = dict(steps=4, learning_rate=3e-3, lambda_prior=0.0, map_levels="all", max_grad_norm=0.0, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_the_factor_reproduces_the_second_moment():
    rows = torch.randn(200, 12) @ torch.randn(12, 12)
    factor = second_moment_factor(rows, energy_kept=1.0)
    assert torch.allclose(factor @ factor.T, rows.T @ rows / len(rows), rtol=1e-4, atol=1e-4)
    # low-rank rows keep only their rank's components
    low = torch.randn(100, 3) @ torch.randn(3, 12)
    assert second_moment_factor(low).shape[1] <= 3


def test_the_term_is_the_relative_kv_change_on_the_anchor_rows():
    rows, weight, delta = torch.randn(300, 8), torch.randn(5, 8), torch.randn(5, 8)
    anchors = PreservationAnchors(
        second_moment_factor(rows, energy_kept=1.0), {"k": (weight @ second_moment_factor(rows, 1.0)).pow(2).sum()}
    )
    direct = (rows @ delta.T).pow(2).sum() / (rows @ weight.T).pow(2).sum()
    assert anchors.loss({"k": delta}).item() == pytest.approx(direct.item(), rel=1e-4)
    assert anchors.loss({"k": torch.zeros(5, 8)}).item() == 0.0


def test_anchors_start_with_the_class_words_and_hold_no_token(two_concepts):
    prompts = anchor_prompts(two_concepts)
    words = [c.class_word for c in two_concepts.concepts]
    assert prompts[: len(set(words))] == [f"a {w}" for w in dict.fromkeys(words)]
    assert len(prompts) == len(set(prompts)) >= len(set(COMMON_WORDS))
    assert not any(c.token in p for c in two_concepts.concepts for p in prompts)


def _class_word_change(bundle, concept_set, result) -> float:
    """Relative change of the K/V the trained deltas make on the class-word prompts."""
    from textloc_core.backends.fingerprint import kv_weights

    weights = kv_weights(bundle.denoiser)
    prompts = [f"a {c.class_word}" for c in concept_set.concepts]
    with torch.no_grad():
        context = bundle.text.encode(prompts, {}).context.float().reshape(-1, weights[next(iter(weights))].shape[1])
    change = sum((context @ d.T).pow(2).sum() for d in result.kv_deltas.values())
    base = sum((context @ weights[k].detach().float().T).pow(2).sum() for k in result.kv_deltas)
    return float(change / base)


def test_preservation_keeps_the_class_words_kv(tiny_bundle, two_concepts):
    """The same run with the term changes the class words' K/V far less, and still trains."""
    plain = train(tiny_bundle, two_concepts, _config(guidance="hard", preservation_weight=0.0))
    kept = train(tiny_bundle, two_concepts, _config(guidance="hard", preservation_weight=1000.0))
    assert kept.history[-1]["preservation"] > 0 and plain.history[-1]["preservation"] == 0
    assert _class_word_change(tiny_bundle, two_concepts, kept) < 0.5 * _class_word_change(
        tiny_bundle, two_concepts, plain
    )
    assert all(d.abs().sum() > 0 for d in kept.kv_deltas.values())


def test_the_anchor_energies_cover_every_trained_delta(tiny_bundle, two_concepts):
    from textloc_core.backends.fingerprint import kv_weights

    weights = kv_weights(tiny_bundle.denoiser)
    anchors = build_anchors(tiny_bundle.text, two_concepts, weights)
    assert set(anchors.base_energy) == set(weights)
    assert anchors.factor.shape[0] == next(iter(weights.values())).shape[1]


def test_settings_saved_before_the_term_read_as_run_without_it():
    import json

    saved = json.loads(TrainConfig(preservation_weight=25.0).to_json())
    assert TrainConfig.from_dict(saved).preservation_weight == 25.0
    del saved["preservation_weight"]
    assert TrainConfig.from_dict(saved).preservation_weight == 0.0


def test_negative_weight_is_named():
    with pytest.raises(ValueError, match="preservation_weight"):
        _config(preservation_weight=-1.0)


def test_flux_trains_without_it_and_records_that(tiny_flux_bundle, doll_bucket_set):
    """The default (30) trains every model: Flux and SD3 set the term aside, and the run's config
    (its checkpoints, its adapter) says 0."""
    pair = doll_bucket_set([{"doll": (2, 2), "bucket": (16, 16)}], side=32, size=12, seed=5)
    result = train(tiny_flux_bundle, pair, _config(guidance="none", steps=1))
    assert TrainConfig().preservation_weight > 0 and result.config.preservation_weight == 0.0
    assert result.history[-1]["preservation"] == 0.0
