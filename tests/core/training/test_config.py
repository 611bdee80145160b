"""TrainConfig: the paper's effective learning rates, validation messages, JSON round trip, the
Train node's widgets."""

import json
from dataclasses import fields

import pytest

from textloc_core.training.config import FORMER_KEYS, TrainConfig, current_keys


def test_effective_learning_rate_matches_the_papers_runs():
    assert TrainConfig().effective_learning_rate == pytest.approx(4e-5)  # one target: 2 + 2 images
    assert TrainConfig(instance_batch=3, prior_batch=3).effective_learning_rate == pytest.approx(6e-5)  # two targets
    assert TrainConfig(lambda_prior=0.0).effective_learning_rate == pytest.approx(2e-5)  # no prior images drawn
    assert TrainConfig(scale_lr_by_batch=False).effective_learning_rate == 1e-5


def test_bad_values_name_the_field():
    with pytest.raises(ValueError, match="guidance"):
        TrainConfig(guidance="medium")
    with pytest.raises(ValueError, match="concept_phrase"):
        TrainConfig(concept_phrase="a {class_word}")


def test_json_round_trip_keeps_tuples():
    config = TrainConfig(map_levels=(2, 4), guidance="soft")
    again = TrainConfig.from_json(config.to_json())
    assert again == config and again.map_levels == (2, 4)


def test_the_train_nodes_widgets_map_onto_the_config_in_one_place():
    """Saved workflows keep the widget names; ``from_widgets`` is the one translation."""
    widgets = dict(
        guidance="soft",
        steps=300,
        learning_rate=2e-5,
        batch=3,
        prior_images=0,
        seed=7,
        checkpoint_every=25,
        resolution=0,
        attention_weight=0.5,
    )
    config = TrainConfig.from_widgets(**widgets)
    assert (config.guidance, config.steps, config.learning_rate, config.seed, config.checkpoint_every) == (
        "soft",
        300,
        2e-5,
        7,
        25,
    )
    assert (config.instance_batch, config.attention_weight, config.resolution) == (3, 0.5, None)
    assert not config.uses_prior and config.prior_batch == 0 and config.lambda_prior == 0.0
    with_prior = TrainConfig.from_widgets(**{**widgets, "prior_images": 200, "resolution": 512})
    assert (with_prior.prior_images, with_prior.prior_batch, with_prior.lambda_prior) == (200, 3, 1.0)
    assert with_prior.uses_prior and with_prior.resolution == 512
    with pytest.raises(ValueError, match="guidance"):
        TrainConfig.from_widgets(**{**widgets, "guidance": "medium"})


def test_json_of_a_retired_setting_still_reads():
    """Adapters and checkpoints written with a setting this textloc no longer has ("extra")."""
    text = TrainConfig(steps=9).to_json().replace('"steps": 9', '"extra": {}, "steps": 9')
    assert TrainConfig.from_json(text) == TrainConfig(steps=9)


def test_settings_saved_under_former_names_read_as_todays():
    """Adapters, checkpoints and run records written before the names matched the Train node's
    widgets keep loading: each former key maps onto its field (``FORMER_KEYS``, one table)."""
    old = json.loads(TrainConfig().to_json())
    for field_name in ("guidance", "attention_weight", "prior_images", "optimizer", "unmasked_weight"):
        del old[field_name]
    old.update(method="soft", lambda_attn=0.25, prior_images_per_class=7, use_8bit_adam=True, masked_denoise_loss=True)
    config = TrainConfig.from_dict(old)
    assert (config.guidance, config.attention_weight, config.prior_images) == ("soft", 0.25, 7)
    assert (config.optimizer, config.unmasked_weight) == ("adamw_8bit", 0.0)
    assert TrainConfig.from_dict({**old, "use_8bit_adam": False}).optimizer == "adamw"
    assert set(current_keys(old)) == set(json.loads(TrainConfig().to_json()))
    assert not set(FORMER_KEYS) & {f.name for f in fields(TrainConfig)}
    # an old key never overrides today's when a file holds both
    assert TrainConfig.from_dict({**old, "guidance": "hard"}).guidance == "hard"


def test_optimizer_is_one_of_the_choices():
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="sgd")
