"""Flux.1-architecture models in the diffusers backend (tiny, random, built in code).

The identifier token as T5 output-space vectors plus a CLIP-L slice for the pooled vector,
K/V deltas on the double-stream blocks' text stream only, the blocks' image-to-text maps,
the flow-matching objective through the one trainer (hard, soft, none, with prior), resume,
the adapter keyed by block, and sampling with maps.
"""
from __future__ import annotations

import math

import pytest
import torch

from textloc_core.adapters.adapter import load_adapter, save_adapter
from textloc_core.attention.cross_attention import AttentionRouter
from textloc_core.backends.flux_backend import FluxDenoiser
from textloc_core.sampling.generation import generate
from textloc_core.training.config import TrainConfig
from textloc_core.training.loop import train
from textloc_core.training.result import make_adapter
from textloc_core.training.setup import setup
from textloc_core.training.step import draw, losses

T5_WIDTH, CLIP_WIDTH = 32, 32


@pytest.fixture
def pair(doll_bucket_set):
    """Two 32-pixel photos, each naming the doll and the bucket (12-pixel squares)."""
    return doll_bucket_set([{"doll": (2, 2), "bucket": (16, 16)}, {"doll": (16, 4), "bucket": (3, 18)}],
                           side=32, size=12, seed=5)


def _config(**overrides) -> TrainConfig:
    values = dict(method="hard", steps=2, learning_rate=1e-3, prior_images_per_class=0, instance_batch=2)
    values.update(overrides)
    return TrainConfig(**values)


def test_token_positions_are_the_t5_positions_and_known_words_are_refused(tiny_flux_bundle):
    text = tiny_flux_bundle.text
    for token in ("<doll1>", "<bucket1>"):
        text.check_token(token)
    doll = text.initial_embedding("doll")
    assert doll.shape == (1, T5_WIDTH + CLIP_WIDTH)
    two = torch.cat([doll, doll])
    encoded = text.encode(["photo of a <doll1> doll and a <bucket1> bucket", "a <doll1> <doll1>", "a red cat"],
                          {"<doll1>": doll, "<bucket1>": two})
    # T5 has no start token: "photo"=0 "of"=1 "a"=2 "<doll1>"=3 ...; a two-vector token takes two positions
    assert encoded.token_positions == [{"<doll1>": [3], "<bucket1>": [7, 8]}, {"<doll1>": [1, 2]}, {}]
    assert encoded.context.shape == (3, 16, T5_WIDTH) and encoded.pooled.shape == (3, CLIP_WIDTH)
    torch.testing.assert_close(encoded.context[0, 3], doll[0, :T5_WIDTH])
    with pytest.raises(ValueError, match="already a word of the T5 vocabulary"):
        text.t5.check_token("doll")
    with pytest.raises(ValueError, match="already a word of the CLIP vocabulary"):
        text.check_token("house")
    with pytest.raises(ValueError, match="T5 tokens long"):
        text.encode(["a " * 20], {})
    with pytest.raises(ValueError, match="T5 32 \\+ CLIP-L 32\\) take 64"):
        text.encode(["a <doll1>"], {"<doll1>": torch.zeros(1, 8)})


def test_the_init_words_t5_vector_starts_where_the_word_itself_sits(tiny_flux_bundle):
    text = tiny_flux_bundle.text
    text.check_token("<doll1>")
    start = text.initial_embedding("doll")
    plain = text.encode(["doll"], {}).context[0, 0]
    torch.testing.assert_close(start[0, :T5_WIDTH], plain)
    clip_row = text.clip.embedding.weight[text.clip.pieces("doll")[0]]
    torch.testing.assert_close(start[0, T5_WIDTH:], clip_row)


def _block_inputs(denoiser):
    """Pre-hooks recording each double-stream attention's inputs."""
    seen, handles = {}, []
    for name, attn in denoiser.blocks().items():
        def hook(_module, args, kwargs, name=name):
            seen[name] = (args, kwargs)
        handles.append(attn.register_forward_pre_hook(hook, with_kwargs=True))
    return seen, handles


def _direct_map(attn, hidden, context, rotary, slots):
    """The block's image-to-text map by the definition: softmax over the text keys of the
    image-query x text-key logits (normed, rotated), mean over heads."""
    from diffusers.models.embeddings import apply_rotary_emb

    d = attn.head_dim
    q = attn.norm_q(attn.to_q(hidden).unflatten(-1, (-1, d)))
    k_text = attn.norm_added_k(attn.add_k_proj(context).unflatten(-1, (-1, d)))
    k_image = attn.norm_k(attn.to_k(hidden).unflatten(-1, (-1, d)))
    q_text = torch.zeros_like(k_text)
    n_text = context.shape[1]
    q = apply_rotary_emb(torch.cat([q_text, q], 1), rotary, sequence_dim=1)[:, n_text:]
    k = apply_rotary_emb(torch.cat([k_text, k_image], 1), rotary, sequence_dim=1)[:, :n_text]
    probs = torch.einsum("bnhd,bthd->bhnt", q, k).div(math.sqrt(d)).softmax(-1).mean(1)
    return torch.gather(probs, 2, slots.unsqueeze(1).expand(-1, probs.shape[1], -1))


def test_captured_maps_are_the_direct_softmax_and_uncaptured_blocks_keep_their_processor(tiny_flux_bundle):
    bundle = tiny_flux_bundle
    denoiser: FluxDenoiser = bundle.denoiser
    bundle.text.check_token("<doll1>")
    encoded = bundle.text.encode(["photo of a <doll1> doll", "a cat"], {"<doll1>": bundle.text.initial_embedding("doll")})
    latents, t = torch.randn(2, 4, 8, 8), torch.tensor([100, 800])
    with torch.no_grad():
        plain = denoiser.predict(latents, t, encoded.context, encoded.pooled)
    originals = {name: attn.processor for name, attn in denoiser.blocks().items()}
    router = AttentionRouter(layers={"double_blocks.1"}, token_slots=torch.tensor([[3, 4], [0, 1]]), keep_grad=False)
    seen, handles = _block_inputs(denoiser)
    try:
        with torch.no_grad(), denoiser.route_attention(router):
            assert denoiser.blocks()["double_blocks.0"].processor is originals["double_blocks.0"]
            assert denoiser.blocks()["double_blocks.1"].processor is not originals["double_blocks.1"]
            routed = denoiser.predict(latents, t, encoded.context, encoded.pooled)
    finally:
        for handle in handles:
            handle.remove()
    assert {name: attn.processor for name, attn in denoiser.blocks().items()} == originals
    torch.testing.assert_close(routed, plain)  # capturing changes nothing the model computes
    (captured,) = router.captured
    assert captured.layer == "double_blocks.1" and captured.probs.shape == (2, 16, 2)  # 4 x 4 image tokens
    args, kwargs = seen["double_blocks.1"]
    attn = denoiser.blocks()["double_blocks.1"]
    with torch.no_grad():
        expected = _direct_map(attn, kwargs["hidden_states"], kwargs["encoder_hidden_states"],
                               kwargs["image_rotary_emb"], torch.tensor([[3, 4], [0, 1]]))
    torch.testing.assert_close(captured.probs, expected)


def test_gradients_reach_only_the_text_stream_kv_and_the_tokens(tiny_flux_bundle, pair):
    bundle = tiny_flux_bundle
    run = setup(bundle, pair, _config())
    assert list(run.trainables.kv_deltas) == [f"double_blocks.{i}.txt_attn.{p}" for i in (0, 1) for p in ("to_k", "to_v")]
    projections = bundle.denoiser.text_kv_projections()
    assert projections["double_blocks.0.txt_attn.to_k"] is bundle.denoiser.unet.transformer_blocks[0].attn.add_k_proj
    for p in bundle.denoiser.unet.parameters():
        p.requires_grad_(False)
    with run.hooks():
        terms, maps = losses(run, *draw(run, 0))
        terms["loss"].backward()
    assert maps.shape == (2, 2, 8, 8) and terms["attention"] > 0
    for key, delta in run.trainables.kv_deltas.items():
        assert delta.grad is not None and delta.grad.abs().sum() > 0, key
    for token, vector in run.trainables.token_embeddings.items():
        assert vector.grad[0, :T5_WIDTH].abs().sum() > 0 and vector.grad[0, T5_WIDTH:].abs().sum() > 0, token
    assert all(p.grad is None for p in bundle.denoiser.unet.parameters())
    assert bundle.denoiser.unet.transformer_blocks[0].attn.add_k_proj._forward_hooks == {}  # removed


def _attention_loss(bundle, pair, result=None) -> float:
    """The hard loss of the maps on the batches of steps 0..5, with a result's trainables."""
    run = setup(bundle, pair, _config())
    if result is not None:
        run.trainables.load(result.kv_deltas, result.token_embeddings)
    with run.hooks(), torch.no_grad():
        return sum(float(losses(run, *draw(run, step))[0]["attention"]) for step in range(6)) / 6


@pytest.mark.parametrize("method", ["hard", "soft", "none"])
def test_every_guidance_trains_flux_with_prior_and_leaves_the_base_unchanged(tiny_flux_bundle, pair, method, tmp_path):
    bundle = tiny_flux_bundle
    before = {k: v.clone() for k, v in bundle.denoiser.unet.state_dict().items()}
    config = _config(method=method, prior_images_per_class=2, prior_sampling_steps=2, instance_batch=1, prior_batch=1)
    result = train(bundle, pair, config, prior_cache_dir=tmp_path / "prior")
    assert result.steps_done == 2 and result.history[0]["prior"] > 0
    assert (result.history[0]["attention"] > 0) == (method != "none")
    assert all(d.abs().sum() > 0 for d in result.kv_deltas.values())
    after = bundle.denoiser.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_hard_guidance_pulls_the_block_maps_onto_the_masks(tiny_flux_bundle, pair):
    bundle = tiny_flux_bundle
    base = _attention_loss(bundle, pair)
    hard = train(bundle, pair, _config(steps=30, learning_rate=1e-2))
    none = train(bundle, pair, _config(method="none", steps=30, learning_rate=1e-2))
    assert _attention_loss(bundle, pair, hard) < 0.8 * base
    assert _attention_loss(bundle, pair, hard) < 0.8 * _attention_loss(bundle, pair, none)


def test_flux_resume_is_bit_identical(tiny_flux_bundle, pair, tmp_path, resume_is_bit_identical):
    resume_is_bit_identical(tiny_flux_bundle, pair, _config(steps=4, checkpoint_every=2), tmp_path)


def test_a_flux_adapter_is_keyed_by_block_round_trips_and_generates_with_maps(tiny_flux_bundle, pair, tmp_path):
    bundle = tiny_flux_bundle
    result = train(bundle, pair, _config(steps=1))
    adapter = make_adapter(result, pair, bundle)
    back = load_adapter(save_adapter(adapter, tmp_path / "flux.safetensors"))
    assert sorted(back.kv_deltas) == sorted(f"double_blocks.{i}.txt_attn.{p}" for i in (0, 1) for p in ("to_k", "to_v"))
    assert back.metadata.base_fingerprint == bundle.fingerprint
    for key in result.kv_deltas:
        assert torch.equal(back.kv_deltas[key], result.kv_deltas[key])
    out = generate(bundle, "photo of a <doll1> doll", adapters=[back], steps=3, guidance_scale=1.0, size=(32, 32),
                   maps_for=["<doll1>"])
    assert out.images.shape == (1, 3, 32, 32) and out.token_maps["<doll1>"].shape == (1, 8, 8)
    assert torch.isfinite(out.images).all() and out.token_maps["<doll1>"].max() > 0
    base = generate(bundle, "photo of a cat", steps=3, guidance_scale=1.0, size=(32, 32))
    with_adapter = generate(bundle, "photo of a cat", adapters=[back], steps=3, guidance_scale=1.0, size=(32, 32))
    assert not torch.equal(base.images, with_adapter.images)  # the deltas act while sampling
