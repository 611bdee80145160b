"""TrainConfig: the paper's effective learning rates, validation messages, JSON round trip."""

import pytest

from textloc_core.config import TrainConfig


def test_effective_learning_rate_matches_the_papers_runs():
    assert TrainConfig().effective_learning_rate == pytest.approx(4e-5)  # one target: 2 + 2 images
    assert TrainConfig(instance_batch=3, prior_batch=3).effective_learning_rate == pytest.approx(6e-5)  # two targets
    assert TrainConfig(lambda_prior=0.0).effective_learning_rate == pytest.approx(2e-5)  # no prior images drawn
    assert TrainConfig(scale_lr_by_batch=False).effective_learning_rate == 1e-5


def test_bad_values_name_the_field():
    with pytest.raises(ValueError, match="method"):
        TrainConfig(method="medium")
    with pytest.raises(ValueError, match="concept_phrase"):
        TrainConfig(concept_phrase="a {class_word}")


def test_json_round_trip_keeps_tuples():
    config = TrainConfig(map_levels=(2, 4), method="soft")
    again = TrainConfig.from_json(config.to_json())
    assert again == config and again.map_levels == (2, 4)
