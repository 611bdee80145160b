"""Other objects in the instance prompts: what is drawn, that a step draws it from (seed, step)
alone, that the trained and the base forward both see it, and the config's refusals."""

import pytest
import torch

from textloc_core.training.config import TrainConfig
from textloc_core.training.other_objects import OBJECT_WORDS, draw_other_objects, with_other_objects
from textloc_core.training.preservation import COLOUR_WORDS


def _config(**kw):
    base = dict(steps=3, learning_rate=1e-3, lambda_prior=0.0, map_levels="all", max_grad_norm=0.0, seed=5)
    base.update(kw)
    return TrainConfig(**base)


def test_a_row_names_a_coloured_thing_with_its_article_at_the_rate_asked():
    drawn = draw_other_objects(1.0, 200, torch.Generator().manual_seed(0))
    for phrase in drawn:
        article, colour, thing = phrase.split(" ")
        assert colour in COLOUR_WORDS and thing in OBJECT_WORDS
        assert article == ("an" if colour[0] in "aeiou" else "a")
    assert len(set(drawn)) > 50  # colours and things vary
    assert draw_other_objects(0.0, 50, torch.Generator().manual_seed(0)) == [None] * 50
    some = draw_other_objects(0.5, 400, torch.Generator().manual_seed(1))
    assert 150 < sum(p is not None for p in some) < 250
    again = draw_other_objects(0.5, 400, torch.Generator().manual_seed(1))
    assert some == again


def test_prompts_get_the_object_appended():
    got = with_other_objects(["a <tw1> star", "a <tw1> star"], ["a red triangle", None])
    assert got == ["a <tw1> star and a red triangle", "a <tw1> star"]


def test_the_step_draws_objects_only_with_the_lever_and_the_same_on_resume(tiny_bundle, two_concepts):
    from textloc_core.training.setup import setup
    from textloc_core.training.step import draw

    plain = setup(tiny_bundle, two_concepts, _config(guidance="hard", outside_preservation_weight=1.0))
    run = setup(
        tiny_bundle, two_concepts, _config(guidance="hard", outside_preservation_weight=1.0, other_object_rate=1.0)
    )
    before = draw(plain, 2)
    after = draw(run, 2)
    assert before[5] is None and len(after[5]) == len(after[0]) and all(after[5])
    # the lever draws last: everything else about the step is what a run without it draws
    for a, b in zip(before[:4], after[:4]):
        assert (a is None and b is None) or torch.equal(a, b)
    assert draw(run, 2)[5] == after[5]


def test_both_forwards_see_the_other_object(tiny_bundle, two_concepts, monkeypatch):
    """The trained forward encodes the prompt with the object; the base model's target is asked
    for the same prompt without the token."""
    from textloc_core.training import step as step_module
    from textloc_core.training.setup import setup

    run = setup(
        tiny_bundle, two_concepts, _config(guidance="hard", outside_preservation_weight=1.0, other_object_rate=1.0)
    )
    seen = {}
    real_base = step_module.base_prediction

    def spy(run_, noisy, timesteps, prompts):
        seen["base"] = list(prompts)
        return real_base(run_, noisy, timesteps, prompts)

    monkeypatch.setattr(step_module, "base_prediction", spy)
    with run.hooks():
        inst, prior, timesteps, noise, subsets, others = step_module.draw(run, 0)
        terms, _ = step_module.losses(run, inst, prior, timesteps, noise, subsets, others)
    assert torch.isfinite(terms["loss"])
    assert seen["base"] == [f"{run.prompts[i]} and {o}" for i, o in zip(inst.tolist(), others)]


def test_the_rate_is_refused_out_of_range_or_without_outside_preservation():
    with pytest.raises(ValueError, match="other_object_rate"):
        TrainConfig(other_object_rate=1.5)
    with pytest.raises(ValueError, match="outside_preservation_weight above 0"):
        TrainConfig(other_object_rate=0.5, outside_preservation_weight=0.0)
    assert TrainConfig(other_object_rate=0.5).other_object_rate == 0.5
