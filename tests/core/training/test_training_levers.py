"""The training levers beside guidance: the masked loss's unmasked weight, the tokens-only
warm-up, V-only tuning and union sampling, each on a tiny random SD-shaped model."""

import json

import pytest
import torch

from textloc_core.training.config import TrainConfig
from textloc_core.training.loop import train


def _config(**kw):
    base = dict(steps=3, learning_rate=1e-3, lambda_prior=0.0, map_levels="all", max_grad_norm=0.0)
    base.update(kw)
    return TrainConfig(**base)


def test_unmasked_weight_spans_masked_to_plain_loss():
    from textloc_core.training.step import instance_loss

    masks = torch.zeros(1, 2, 16, 16)
    masks[0, 0, :8, :8] = 1  # concept 0 covers the top-left latent quarter (16 of 64 cells)
    target, pred = torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8)
    pred[..., 4:, :] = 5.0  # wrong by 5 outside the mask (32 cells)
    pred[..., :4, :4] = 1.0  # wrong by 1 inside (16 cells)
    assert instance_loss(0.0, pred, target, masks).item() == pytest.approx(1.0)
    assert instance_loss(1.0, pred, target, masks).item() == pytest.approx((25 * 32 + 16) / 64)
    # half weight outside: (16 x 1 + 0.5 x 32 x 25) / (16 + 0.5 x 48)
    assert instance_loss(0.5, pred, target, masks).item() == pytest.approx((16 + 0.5 * 800) / (16 + 0.5 * 48))


def test_saved_masked_switch_reads_as_the_weight_it_ran():
    fresh = json.loads(TrainConfig().to_json())
    assert "masked_denoise_loss" not in fresh and fresh["unmasked_weight"] == TrainConfig.unmasked_weight
    for switch, weight in ((True, 0.0), (False, 1.0)):
        old = dict(fresh, masked_denoise_loss=switch)
        del old["unmasked_weight"]
        assert TrainConfig.from_dict(old).unmasked_weight == weight
    del fresh["unmasked_weight"], fresh["token_warmup_steps"], fresh["train_keys"], fresh["union_sampling"]
    read = TrainConfig.from_dict(fresh)  # a version before the levers ran all of them off
    assert (read.unmasked_weight, read.token_warmup_steps, read.train_keys, read.union_sampling) == (
        1.0,
        0,
        True,
        False,
    )


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(unmasked_weight=1.5), "unmasked_weight"),
        (dict(unmasked_weight=-0.1), "unmasked_weight"),
        (dict(token_warmup_steps=3), "token_warmup_steps"),
        (dict(token_warmup_steps=-1), "token_warmup_steps"),
        (dict(token_warmup_learning_rate=0.0), "token_warmup_learning_rate"),
    ],
)
def test_bad_lever_values_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        _config(**bad)


def test_v_only_leaves_w_k_as_the_base_models(tiny_bundle, two_concepts):
    result = train(tiny_bundle, two_concepts, _config(guidance="hard", train_keys=False))
    keys = [k for k in result.kv_deltas if k.endswith(".to_k")]
    values = [k for k in result.kv_deltas if k.endswith(".to_v")]
    assert keys and values
    assert all(torch.count_nonzero(result.kv_deltas[k]) == 0 for k in keys)
    assert all(result.kv_deltas[k].abs().sum() > 0 for k in values)


def test_calibration_measures_only_what_trains(tiny_bundle, two_concepts):
    """V-only calibration sees the W_V gradients alone, so it picks another weight than K+V."""
    both = train(tiny_bundle, two_concepts, _config(guidance="hard", steps=1, calibration_batches=1))
    v_only = train(
        tiny_bundle, two_concepts, _config(guidance="hard", steps=1, calibration_batches=1, train_keys=False)
    )
    assert both.effective_attention_weight != pytest.approx(v_only.effective_attention_weight, rel=1e-3)


def test_warmup_trains_only_the_tokens_at_their_own_rate(tiny_bundle, two_concepts):
    initial = {t: tiny_bundle.text.initial_embedding(w) for t, w in (("<doll1>", "doll"), ("<bucket1>", "bucket"))}

    def warm_steps_only(rate):
        """The run stopped after its two warm-up steps."""
        done = []
        config = _config(
            token_warmup_steps=2, token_warmup_learning_rate=rate, weight_decay=0.0, scale_lr_by_batch=False
        )
        return train(
            tiny_bundle, two_concepts, config, on_step=lambda r: done.append(r.step), should_stop=lambda: len(done) >= 2
        )

    small = warm_steps_only(1e-4)
    assert small.steps_done == 2
    assert all(torch.count_nonzero(d) == 0 for d in small.kv_deltas.values())
    large = warm_steps_only(1e-2)
    for token, start in initial.items():
        # AdamW moves each coordinate by at most about the rate per step: two steps, 2 x lr
        moved_small = (small.token_embeddings[token] - start).abs().max().item()
        moved_large = (large.token_embeddings[token] - start).abs().max().item()
        assert 0 < moved_small <= 2.2e-4 and 2e-3 < moved_large <= 2.2e-2
    after = train(tiny_bundle, two_concepts, _config(token_warmup_steps=2, token_warmup_learning_rate=1e-4))
    assert all(d.abs().sum() > 0 for d in after.kv_deltas.values())  # step 3 trains the deltas


def test_union_sampling_names_random_subsets_with_their_masks(tiny_bundle, two_concepts):
    from textloc_core.training.setup import setup
    from textloc_core.training.step import draw
    from textloc_core.training.union import subset_rows

    plain = setup(tiny_bundle, two_concepts, _config(instance_batch=3))
    union = setup(tiny_bundle, two_concepts, _config(instance_batch=3, union_sampling=True))
    try:
        seen = set()
        for step in range(12):
            *same, none, _ = draw(plain, step)
            *also, subsets, _ = draw(union, step)
            assert none is None
            # the subsets are drawn last: batch, timesteps and noise stay those of a plain run
            assert all(torch.equal(a, b) for a, b in zip(same, also) if a is not None)
            prompts, masks = subset_rows(union, also[0], subsets)
            for i, names, prompt, rows in zip(also[0].tolist(), subsets, prompts, masks):
                shown = set(two_concepts.images[i].masks)
                assert names and set(names) <= shown
                assert ("<doll1>" in prompt) == ("doll" in names) and ("<bucket1>" in prompt) == ("bucket" in names)
                for k, concept in enumerate(two_concepts.concepts):
                    assert torch.equal(
                        rows[k], union.masks[i, k] if concept.name in names else torch.zeros_like(rows[k])
                    )
                if len(shown) == 2:
                    seen.add(tuple(names))
        assert seen == {("doll",), ("bucket",), ("doll", "bucket")}
    finally:
        plain.injector.remove()
        union.injector.remove()
    result = train(tiny_bundle, two_concepts, _config(guidance="hard", union_sampling=True, unmasked_weight=0.0))
    assert all(torch.isfinite(d).all() and d.abs().sum() > 0 for d in result.kv_deltas.values())


def test_train_node_widget_maps_onto_unmasked_weight():
    widgets = dict(guidance="hard", steps=10, learning_rate=1e-5, batch=2, prior_images=0, seed=0, checkpoint_every=5)
    # a workflow saved before the widget trains at today's default, as ComfyUI fills in optional inputs
    assert TrainConfig.from_widgets(**widgets).unmasked_weight == TrainConfig.unmasked_weight
    assert TrainConfig.from_widgets(**widgets, unmasked_weight=0.0).unmasked_weight == 0.0
