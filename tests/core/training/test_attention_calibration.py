"""attention_weight_mode="calibrated" (the default): the attention term's weight is set before the
first step so that its gradient on the trainables is attention_fraction x the denoising loss's;
it differs between models and resolutions (scale-free), is recorded in checkpoints (a resumed
run reuses it) and is a no-op with method "none". "fixed" is what it always was, and its config
JSON is unchanged."""

import json
from dataclasses import replace

import pytest
import torch

from textloc_core.training import step as step_module
from textloc_core.training.config import TrainConfig
from textloc_core.training.loop import train
from textloc_core.training.setup import setup
from textloc_core.training.step import calibrate_attention_weight, draw, losses


def _config(**kw):
    base = dict(
        steps=3,
        learning_rate=1e-3,
        prior_images=2,
        prior_sampling_steps=2,
        map_levels="all",
        attention_weight_mode="calibrated",
        attention_fraction=0.1,
    )
    base.update(kw)
    return TrainConfig(**base)


def _other_bundle(tiny_parts, tiny_unet_builder):
    """The tiny model with another randomly initialised UNet."""
    from textloc_core.backends.diffusers_backend import bundle_from_diffusers

    torch.manual_seed(1)
    return bundle_from_diffusers(**{**tiny_parts, "unet": tiny_unet_builder()})


def _grad_norm(run, which: str, step: int = 0) -> float:
    """||grad|| on the trainables of one term of ``step``'s loss, by a plain backward."""
    params = run.trainables.parameters()
    for p in params:
        p.grad = None
    terms, _ = losses(run, *draw(run, step))
    term = (
        terms["instance"] + run.config.lambda_prior * terms["prior"]
        if which == "denoise"
        else run.effective_attention_weight * terms["attention"]
    )
    term.backward()
    run.router.clear()
    norm = torch.sqrt(sum((p.grad.float() ** 2).sum() for p in params if p.grad is not None))
    for p in params:
        p.grad = None
    return float(norm)


@pytest.mark.parametrize("method", ["hard", "soft"])
def test_calibrated_weight_makes_the_gradient_ratio_the_fraction(tiny_bundle, method, two_concepts_at):
    config = _config(guidance=method, lambda_prior=0.0, attention_fraction=0.1, calibration_batches=1)
    with torch.enable_grad():
        run = setup(tiny_bundle, two_concepts_at(), config)
        with run.hooks():
            weight = calibrate_attention_weight(run)
            assert weight == run.effective_attention_weight and weight > 0 and weight != config.attention_weight
            ratio = _grad_norm(run, "attention") / _grad_norm(run, "denoise")
    assert ratio == pytest.approx(0.1, rel=1e-4)


def test_calibration_averages_the_norms_over_the_first_batches(tiny_bundle, two_concepts_at):
    """With calibration_batches=K the weight is fraction x mean ||grad denoise|| / mean ||grad
    attention|| over the batches of steps 0..K-1, which differs from step 0's ratio alone."""
    config = _config(lambda_prior=0.0, attention_fraction=0.5, calibration_batches=4)
    with torch.enable_grad():
        run = setup(tiny_bundle, two_concepts_at(), config)
        with run.hooks():
            weight = calibrate_attention_weight(run)
            run.effective_attention_weight = 1.0
            denoise = [_grad_norm(run, "denoise", step) for step in range(4)]
            attention = [_grad_norm(run, "attention", step) for step in range(4)]
    assert weight == pytest.approx(0.5 * sum(denoise) / sum(attention), rel=1e-4)
    assert weight != pytest.approx(0.5 * denoise[0] / attention[0], rel=1e-3)


def test_the_same_fraction_gives_other_weights_on_other_models_and_resolutions(
    tiny_bundle, tiny_parts, tiny_unet_builder, two_concepts_at
):
    # the plain loss: with the masked loss these two tiny random models happen to calibrate alike
    config = _config(steps=1, lambda_prior=0.0, unmasked_weight=1.0, preservation_weight=0.0)
    base = train(tiny_bundle, two_concepts_at(16), config).effective_attention_weight
    other_model = train(
        _other_bundle(tiny_parts, tiny_unet_builder), two_concepts_at(16), config
    ).effective_attention_weight
    other_side = train(tiny_bundle, two_concepts_at(32), config).effective_attention_weight
    assert all(w is not None and w > 0 for w in (base, other_model, other_side))
    assert abs(other_model / base - 1) > 0.05, (base, other_model)
    assert abs(other_side / base - 1) > 0.05, (base, other_side)
    # twice the fraction, twice the weight (same model, same batch)
    double = train(
        tiny_bundle, two_concepts_at(16), replace(config, attention_fraction=2 * config.attention_fraction)
    ).effective_attention_weight
    assert double == pytest.approx(2 * base, rel=1e-6)


def test_resume_after_calibration_reproduces_the_uninterrupted_run(
    tiny_bundle, tmp_path, monkeypatch, two_concepts_at, killed_after_step_3
):
    concepts, config = two_concepts_at(), _config(steps=4, checkpoint_every=2)
    reports = []
    full = train(tiny_bundle, concepts, config, checkpoint_dir=tmp_path / "a", on_step=reports.append)
    assert {r.effective_attention_weight for r in reports} == {
        full.effective_attention_weight
    } and full.effective_attention_weight != 1.0
    saved = json.loads((tmp_path / "a" / "step-000000004" / "state.json").read_text())
    assert json.loads(saved["config_json"])["attention_weight_mode"] == "calibrated"

    killed_after_step_3(tiny_bundle, concepts, config, tmp_path / "b")

    def no_recalibration(*args, **kwargs):
        raise AssertionError("a resumed run must reuse the recorded weight, not recalibrate")

    monkeypatch.setattr(step_module, "gradient_norms", no_recalibration)
    resumed = train(tiny_bundle, concepts, config, checkpoint_dir=tmp_path / "b", resume=True)
    assert resumed.steps_done == 4 and resumed.history == full.history
    assert resumed.effective_attention_weight == full.effective_attention_weight
    for key in full.kv_deltas:
        assert torch.equal(full.kv_deltas[key], resumed.kv_deltas[key]), key
    for token in full.token_embeddings:
        assert torch.equal(full.token_embeddings[token], resumed.token_embeddings[token]), token


def test_calibration_is_a_no_op_without_guidance(tiny_bundle, two_concepts_at):
    concepts = two_concepts_at()
    calibrated = train(tiny_bundle, concepts, _config(guidance="none", attention_weight=0.7))
    fixed = train(tiny_bundle, concepts, _config(guidance="none", attention_weight=0.7, attention_weight_mode="fixed"))
    assert calibrated.effective_attention_weight == fixed.effective_attention_weight == 0.7
    assert calibrated.history == fixed.history
    for key in fixed.kv_deltas:
        assert torch.equal(fixed.kv_deltas[key], calibrated.kv_deltas[key]), key


def test_fixed_mode_uses_attention_weight_and_its_json_is_unchanged(tiny_bundle, two_concepts_at):
    config = _config(steps=1, attention_weight_mode="fixed", attention_weight=0.25)
    assert train(tiny_bundle, two_concepts_at(), config).effective_attention_weight == 0.25
    fixed = TrainConfig(attention_weight_mode="fixed")
    data = json.loads(fixed.to_json())
    assert not {"attention_weight_mode", "attention_fraction", "calibration_batches"} & set(
        data
    )  # older checkpoints match
    assert TrainConfig.from_json(fixed.to_json()) == fixed  # a JSON without the mode is a fixed run's
    assert TrainConfig.from_json(TrainConfig().to_json()) == TrainConfig()
    assert TrainConfig().calibrated and TrainConfig().attention_weight_mode == "calibrated"
    calibrated = _config(attention_fraction=0.3)
    assert TrainConfig.from_json(calibrated.to_json()) == calibrated
    # a calibrated run saved before calibration_batches existed measured one batch
    older = json.loads(calibrated.to_json())
    del older["calibration_batches"]
    assert TrainConfig.from_json(json.dumps(older)).calibration_batches == 1


def test_bad_calibration_settings_name_the_field():
    with pytest.raises(ValueError, match="attention_weight_mode"):
        TrainConfig(attention_weight_mode="auto")
    for bad in (0.0, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="attention_fraction"):
            TrainConfig(attention_weight_mode="calibrated", attention_fraction=bad)
    with pytest.raises(ValueError, match="attention_weight"):
        TrainConfig(attention_weight=float("nan"))
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="calibration_batches"):
            TrainConfig(attention_weight_mode="calibrated", calibration_batches=bad)


def test_widgets_carry_the_calibration_settings():
    widgets = dict(guidance="hard", steps=10, learning_rate=1e-5, batch=2, prior_images=0, seed=0, checkpoint_every=5)
    config = TrainConfig.from_widgets(**widgets, attention_weight_mode="calibrated", attention_fraction=0.05)
    assert (config.attention_weight_mode, config.attention_fraction, config.calibrated) == ("calibrated", 0.05, True)
    default = TrainConfig.from_widgets(**widgets)
    # the mode and fraction the TinyWorld table supports (docs/results.md): the node, the widgets and the API agree
    assert default.attention_weight_mode == TrainConfig().attention_weight_mode == "calibrated" and default.calibrated
    assert default.attention_fraction == TrainConfig().attention_fraction == 1.0


def test_checkpoints_of_either_name_give_the_recorded_weight():
    from textloc_core.training.loop import CHECKPOINT_WEIGHT_KEY, recorded_effective_weight

    assert recorded_effective_weight({CHECKPOINT_WEIGHT_KEY: 0.25, "history": []}) == 0.25
    assert recorded_effective_weight({"attention_weight": 0.5}) == 0.5  # written before the name was settled
    assert recorded_effective_weight({"lambda_attn_used": 0.75}) == 0.75  # the name before this one
    assert recorded_effective_weight({"history": []}) is None
