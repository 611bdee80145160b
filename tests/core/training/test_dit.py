"""Diffusion transformers (Flux.1 and SD3.5 architectures, tiny, random, built in code) through
the one trainer: only the text-stream K/V and the tokens get gradient, hard / soft / none train
with prior and leave the base unchanged, hard pulls the block maps onto the masks, resume is
bit-identical, the adapter is keyed by block, round-trips and generates with maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from textloc_core.adapters.adapter import load_adapter, save_adapter
from textloc_core.sampling.generation import generate
from textloc_core.training.config import TrainConfig
from textloc_core.training.loop import train
from textloc_core.training.result import make_adapter
from textloc_core.training.setup import setup
from textloc_core.training.step import draw, losses


@dataclass
class Family:
    """A tiny model of one family and what the tests expect of it."""

    bundle: object
    kv_keys: list[str]
    """The canonical K/V keys, in forward order."""
    slices: list[tuple[int, int]]
    """Each text encoder's slice of a token's vector."""
    encoders: list[str]
    """The text encoders' names in that order, as messages give them."""


def _keys(prefix: str, attention: str, blocks: int) -> list[str]:
    return [f"{prefix}.{i}.{attention}.{p}" for i in range(blocks) for p in ("to_k", "to_v")]


@pytest.fixture(params=["flux", "sd3"])
def family(request, tiny_flux_bundle, tiny_sd3_bundle) -> Family:
    if request.param == "flux":
        return Family(tiny_flux_bundle, _keys("double_blocks", "txt_attn", 2), [(0, 32), (32, 64)], ["T5", "CLIP-L"])
    return Family(
        tiny_sd3_bundle,
        _keys("joint_blocks", "context_block.attn", 3),
        [(0, 32), (32, 80), (80, 176)],
        ["clip_l", "clip_g", "t5"],
    )


@pytest.fixture
def pair(doll_bucket_set):
    """Two 32-pixel photos, each naming the doll and the bucket (12-pixel squares)."""
    return doll_bucket_set(
        [{"doll": (2, 2), "bucket": (16, 16)}, {"doll": (16, 4), "bucket": (3, 18)}], side=32, size=12, seed=5
    )


def _config(**overrides) -> TrainConfig:
    values = dict(guidance="hard", steps=2, learning_rate=1e-3, prior_images=0, instance_batch=2)
    values.update(overrides)
    return TrainConfig(**values)


def test_known_words_and_vectors_of_another_width_are_refused(family):
    text = family.bundle.text
    with pytest.raises(ValueError, match="already a word of the CLIP vocabulary"):
        text.check_token("house")
    with pytest.raises(ValueError, match="already a word of the T5 vocabulary"):
        text.t5.check_token("doll")
    text.check_token("<doll1>")
    widths = " \\+ ".join(f"{name} {end - start}" for name, (start, end) in zip(family.encoders, family.slices))
    with pytest.raises(ValueError, match=f"\\({widths}\\) take {family.slices[-1][1]}"):
        text.encode(["a <doll1>"], {"<doll1>": torch.zeros(1, 8)})


def test_only_routed_blocks_change_processor_and_capturing_changes_no_output(family, routed_block):
    blocks = list(family.bundle.denoiser.blocks())
    found = routed_block(family.bundle, blocks[1], torch.tensor([[3], [0]]))
    assert found["after"] == found["before"]
    assert all((found["during"][b] is found["before"][b]) == (b != blocks[1]) for b in blocks)
    torch.testing.assert_close(found["routed"], found["plain"])
    assert [c.layer for c in found["captured"]] == [blocks[1]]


def test_gradients_reach_only_the_text_stream_kv_and_the_tokens(family, pair):
    bundle = family.bundle
    run = setup(bundle, pair, _config())
    assert list(run.trainables.kv_deltas) == family.kv_keys
    projections = bundle.denoiser.text_kv_projections()
    assert projections[family.kv_keys[0]] is bundle.denoiser.unet.transformer_blocks[0].attn.add_k_proj
    for p in bundle.denoiser.unet.parameters():
        p.requires_grad_(False)
    with run.hooks():
        terms, maps = losses(run, *draw(run, 0))
        terms["loss"].backward()
    assert maps.shape == (2, 2, 8, 8) and terms["attention"] > 0  # 32 px: 16 latent cells, 2 x 2 patches
    for key, delta in run.trainables.kv_deltas.items():
        assert delta.grad is not None and delta.grad.abs().sum() > 0, key
    for token, vector in run.trainables.token_embeddings.items():
        for start, end in family.slices:
            assert vector.grad[0, start:end].abs().sum() > 0, (token, start)
    assert all(p.grad is None for p in bundle.denoiser.unet.parameters())
    assert bundle.denoiser.unet.transformer_blocks[0].attn.add_k_proj._forward_hooks == {}  # removed


@pytest.mark.parametrize("method", ["hard", "soft", "none"])
def test_every_guidance_trains_with_prior_and_leaves_the_base_unchanged(family, pair, method, tmp_path):
    bundle = family.bundle
    before = {k: v.clone() for k, v in bundle.denoiser.unet.state_dict().items()}
    config = _config(guidance=method, prior_images=2, prior_sampling_steps=2, instance_batch=1, prior_batch=1)
    result = train(bundle, pair, config, prior_cache_dir=tmp_path / "prior")
    assert result.steps_done == 2 and result.history[0]["prior"] > 0
    assert (result.history[0]["attention"] > 0) == (method != "none")
    assert list(result.kv_deltas) == family.kv_keys and all(d.abs().sum() > 0 for d in result.kv_deltas.values())
    after = bundle.denoiser.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_outside_preservation_trains_and_leaves_the_base_unchanged(family, pair):
    """The base model's forward (deltas off, tokens removed) works on the joint blocks too."""
    bundle = family.bundle
    before = {k: v.clone() for k, v in bundle.denoiser.unet.state_dict().items()}
    result = train(bundle, pair, _config(outside_preservation_weight=1.0))
    assert result.history[-1]["outside"] > 0
    assert all(d.abs().sum() > 0 for d in result.kv_deltas.values())
    after = bundle.denoiser.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def _attention_loss(bundle, pair, result=None) -> float:
    """The hard loss of the maps on the batches of steps 0..5, with a result's trainables."""
    run = setup(bundle, pair, _config())
    if result is not None:
        run.trainables.load(result.kv_deltas, result.token_embeddings)
    with run.hooks(), torch.no_grad():
        return sum(float(losses(run, *draw(run, step))[0]["attention"]) for step in range(6)) / 6


def test_hard_guidance_pulls_the_block_maps_onto_the_masks(family, pair):
    bundle = family.bundle
    base = _attention_loss(bundle, pair)
    hard = _attention_loss(bundle, pair, train(bundle, pair, _config(steps=30, learning_rate=1e-2)))
    none = _attention_loss(bundle, pair, train(bundle, pair, _config(guidance="none", steps=30, learning_rate=1e-2)))
    assert hard < 0.8 * base and hard < 0.8 * none


def test_resume_is_bit_identical(family, pair, tmp_path, resume_is_bit_identical):
    resume_is_bit_identical(family.bundle, pair, _config(steps=4, checkpoint_every=2), tmp_path)


def test_the_adapter_is_keyed_by_block_round_trips_and_generates_with_maps(family, pair, tmp_path):
    bundle = family.bundle
    result = train(bundle, pair, _config(steps=1))
    back = load_adapter(save_adapter(make_adapter(result, pair, bundle), tmp_path / "dit.safetensors"))
    assert sorted(back.kv_deltas) == sorted(family.kv_keys)
    assert back.metadata.base_fingerprint == bundle.fingerprint
    for key in result.kv_deltas:
        assert torch.equal(back.kv_deltas[key], result.kv_deltas[key])
    assert torch.equal(back.token_embeddings["<doll1>"], result.token_embeddings["<doll1>"])
    sample = dict(steps=3, guidance_scale=1.0, size=(32, 32))
    out = generate(bundle, "photo of a <doll1> doll", adapters=[back], maps_for=["<doll1>"], **sample)
    assert out.images.shape == (1, 3, 32, 32) and out.token_maps["<doll1>"].shape == (1, 8, 8)
    assert torch.isfinite(out.images).all() and out.token_maps["<doll1>"].max() > 0
    base = generate(bundle, "photo of a cat", **sample)
    assert not torch.equal(base.images, generate(bundle, "photo of a cat", adapters=[back], **sample).images)


def test_gradient_checkpointing_through_the_blocks_trains_the_same(family, pair, trained_alike):
    bundle = family.bundle
    plain = train(bundle, pair, _config())
    saved = train(bundle, pair, _config(gradient_checkpointing=True))
    assert not bundle.denoiser.unet.is_gradient_checkpointing  # switched off again
    trained_alike(plain, saved)


def test_bf16_autocast_trains(family, pair):
    result = train(family.bundle, pair, _config(mixed_precision="bf16"))
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in result.history)
    assert result.history[0]["attention"] > 0 and all(d.abs().sum() > 0 for d in result.kv_deltas.values())
