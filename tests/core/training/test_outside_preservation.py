"""Outside preservation: the class prompt it asks the base model for, the region its loss reads,
that its target is the base model's own prediction, and that a run with it trains."""

import pytest
import torch

from textloc_core.training.config import TrainConfig
from textloc_core.training.loop import train
from textloc_core.training.outside_preservation import base_prediction, outside_loss, without_tokens


def _config(**kw):
    base = dict(steps=3, learning_rate=1e-3, lambda_prior=0.0, map_levels="all", max_grad_norm=0.0, seed=5)
    base.update(kw)
    return TrainConfig(**base)


def test_the_base_model_is_asked_for_the_prompt_without_tokens():
    assert without_tokens("photo of a <tw1> star and a <tw2> ring", ["<tw1>", "<tw2>"]) == "photo of a star and a ring"
    assert without_tokens("a sks doll", ["sks"]) == "a doll"


def test_the_loss_reads_only_the_pixels_outside_the_masks():
    masks = torch.zeros(1, 2, 16, 16)
    masks[0, 1, :8, :8] = 1  # the second concept covers the top-left latent quarter (16 of 64 cells)
    base, pred = torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8)
    pred[..., :4, :4] = 7.0  # inside: ignored
    assert outside_loss(pred, base, masks).item() == 0.0
    pred[..., 4:, :] = 2.0  # 32 of the 48 outside cells off by 2
    assert outside_loss(pred, base, masks).item() == pytest.approx(4.0 * 32 / 48)
    assert outside_loss(pred, base, torch.ones(1, 2, 16, 16)).item() == 0.0


def test_the_target_is_the_base_models_prediction_and_the_run_is_left_as_it_was(tiny_bundle, two_concepts):
    from textloc_core.training.setup import setup

    run = setup(tiny_bundle, two_concepts, _config(guidance="hard", outside_preservation_weight=1.0))
    with run.hooks():
        with torch.no_grad():
            for delta in run.trainables.kv_deltas.values():
                delta.normal_(std=0.5)  # a trained adapter: the base forward must not see it
        run.router.token_slots = torch.zeros(2, 1, dtype=torch.long)
        noisy = torch.randn(2, *run.latents.shape[1:])
        timesteps = torch.tensor([100, 900])
        prompts = run.prompts[:2]
        got = base_prediction(run, noisy, timesteps, prompts)
        assert run.injector.strength == 1.0 and run.router.token_slots is not None and not run.router.captured
        run.injector.strength = 0.0
        with torch.no_grad():
            context = tiny_bundle.text.encode([without_tokens(p, run.tokens) for p in prompts], {}).context
            want = tiny_bundle.denoiser.predict(noisy, timesteps, context, None).float()
        run.injector.strength = 1.0
        with torch.no_grad():
            adapted = tiny_bundle.denoiser.predict(noisy, timesteps, context, None).float()
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, adapted, atol=1e-3)  # the deltas were really switched off


def test_a_run_with_the_term_records_it_and_trains(tiny_bundle, two_concepts):
    with_term = train(tiny_bundle, two_concepts, _config(guidance="hard", outside_preservation_weight=1.0))
    without = train(tiny_bundle, two_concepts, _config(guidance="hard", outside_preservation_weight=0.0))
    assert all(h["outside"] >= 0 for h in with_term.history) and with_term.history[-1]["outside"] > 0
    assert all(h["outside"] == 0 for h in without.history)
    assert any(not torch.allclose(with_term.kv_deltas[k], without.kv_deltas[k]) for k in with_term.kv_deltas), (
        "the term changed nothing"
    )


def test_a_negative_weight_is_refused_by_name():
    with pytest.raises(ValueError, match="outside_preservation_weight"):
        TrainConfig(outside_preservation_weight=-1.0)
