"""The diffusers backend: token positions from real tokenisation, differentiable injection,
attn2-only routing that leaves outputs unchanged, canonical names and the fingerprint."""

import pytest
import torch

from textloc_core.attention.cross_attention import AttentionRouter, find_cross_attention
from textloc_core.backends.base import DenoiserBackend, TextBackend
from textloc_core.backends.diffusers_backend import kv_fingerprint
from textloc_core.backends.fingerprint import base_model_fingerprint, kv_weights_of


def test_bundle_satisfies_the_protocols(tiny_bundle):
    assert isinstance(tiny_bundle.text, TextBackend) and isinstance(tiny_bundle.denoiser, DenoiserBackend)
    assert tiny_bundle.denoiser.vae_scale_factor == 2 and tiny_bundle.text.embedding_dim == 32


def test_token_positions_found_anywhere_for_several_concepts(tiny_bundle):
    text = tiny_bundle.text
    a, b = text.initial_embedding("doll"), torch.cat([text.initial_embedding("red"), text.initial_embedding("cup")])
    prompts = [
        "<a1> doll",
        "photo of a small red <b2> cup next to a <a1> doll",
        "a <b2> cup, a <a1> doll and <a1>",
        "a chair",
    ]
    encoded = text.encode(prompts, {"<a1>": a, "<b2>": b})
    # context index 0 is SOT; "<b2>" has two vectors, so it fills two positions
    assert encoded.token_positions == [
        {"<a1>": [1]},
        {"<b2>": [6, 7], "<a1>": [12]},
        {"<b2>": [2, 3], "<a1>": [7, 10]},
        {},
    ]
    assert encoded.context.shape == (4, 77, 32)


def test_gradient_reaches_every_token_vector(tiny_bundle):
    text = tiny_bundle.text
    embeddings = {t: text.initial_embedding(w).requires_grad_() for t, w in (("<x1>", "doll"), ("<y1>", "bucket"))}
    context = text.encode(["photo of a <x1> doll and a <y1> bucket"], embeddings).context
    (context**2).sum().backward()
    for token, vector in embeddings.items():
        assert vector.grad is not None and vector.grad.abs().sum() > 0, token


def test_injected_vector_is_what_the_encoder_sees(tiny_bundle):
    """Injecting the init word's own vector reproduces the plain prompt exactly."""
    text = tiny_bundle.text
    injected = text.encode(["photo of a <d1>"], {"<d1>": text.initial_embedding("doll")}).context
    plain = text.encode(["photo of a doll"], {}).context
    assert torch.allclose(injected, plain, atol=1e-6)


def test_bad_tokens_and_init_words_are_explained(tiny_bundle):
    with pytest.raises(ValueError, match="already a word"):
        tiny_bundle.text.check_token("doll")
    with pytest.raises(ValueError, match="lower-case"):
        tiny_bundle.text.check_token("<Doll>")
    # a word of several pieces starts from their mean (issue 14), nothing to refuse
    two = tiny_bundle.text.initial_embedding("headphone bucket")
    pieces = torch.cat([tiny_bundle.text.initial_embedding(w) for w in ("headphone", "bucket")])
    if len(tiny_bundle.text._pieces("headphone bucket")) == 2:
        assert torch.allclose(two, pieces.mean(0, keepdim=True))
    with pytest.raises(ValueError, match="Shorten"):
        tiny_bundle.text.encode([" ".join(["doll"] * 80)], {})


def test_routing_matches_fused_attention_and_restores_processors(tiny_bundle):
    denoiser = tiny_bundle.denoiser
    layers = find_cross_attention(denoiser.unet)
    before = {name: attn.processor for name, attn in layers.items()}
    canonical = sorted(denoiser.canonical_layer_name(n) for n in layers)
    assert canonical == sorted(
        [f"input_blocks.{i}.1.transformer_blocks.0.attn2" for i in (1, 3)]
        + ["middle_block.1.transformer_blocks.0.attn2"]
        + [f"output_blocks.{i}.1.transformer_blocks.0.attn2" for i in range(4)]
    )
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    context = torch.randn(2, 77, 32)
    with torch.no_grad():
        fused = denoiser.predict(x, t, context)
        router = AttentionRouter(layers={canonical[0]}, token_slots=torch.tensor([[3], [5]]), keep_grad=False)
        with denoiser.route_attention(router):
            routed = denoiser.predict(x, t, context)
    assert torch.allclose(fused, routed, atol=1e-5)
    assert [m.layer for m in router.captured] == [canonical[0]]
    assert {name: attn.processor for name, attn in layers.items()} == before
    # self-attention (attn1) is never routed
    assert all(
        type(m.processor).__name__ != "_RoutedProcessor"
        for n, m in denoiser.unet.named_modules()
        if n.endswith("attn1")
    )


def test_fingerprint_tracks_kv_weights_only(tiny_bundle):
    denoiser = tiny_bundle.denoiser
    assert kv_fingerprint(denoiser) == tiny_bundle.fingerprint and len(tiny_bundle.fingerprint) == 16
    attn = next(iter(find_cross_attention(denoiser.unet).values()))
    with torch.no_grad():
        attn.to_q.weight.add_(1.0)
        assert kv_fingerprint(denoiser) == tiny_bundle.fingerprint
        attn.to_k.weight[0, 0] += 1.0
    assert kv_fingerprint(denoiser) != tiny_bundle.fingerprint


def test_fingerprint_does_not_depend_on_the_load_dtype(tiny_parts):
    """The same checkpoint loaded in fp32 or fp16 is the same base model; one changed K weight
    is another. (A user picking fp16 in a loader must not get "trained on another base model".)"""
    from textloc_core.backends.diffusers_backend import bundle_from_diffusers

    bundle = bundle_from_diffusers(**tiny_parts)
    fp32, denoiser, unet = bundle.fingerprint, bundle.denoiser, tiny_parts["unet"]
    unet.half()  # the fp32 checkpoint, loaded in fp16
    assert kv_fingerprint(denoiser) == fp32
    unet.float()  # an fp16 checkpoint (the weights now hold fp16 values), loaded in fp32
    assert kv_fingerprint(denoiser) == fp32
    # the ComfyUI backend hashes a {"<canonical layer>.to_k": weight} dict the same way
    canonical = {denoiser.canonical_layer_name(n): m for n, m in find_cross_attention(unet).items()}
    assert base_model_fingerprint(kv_weights_of(canonical)) == fp32
    attn = next(iter(find_cross_attention(unet).values()))
    with torch.no_grad():
        attn.to_k.weight[0, 0] += 0.01
    assert kv_fingerprint(denoiser) != fp32
    unet.half()
    assert kv_fingerprint(denoiser) != fp32


def test_fingerprint_of_a_bf16_checkpoint_is_the_same_in_every_load_dtype():
    # bf16-stored weights convert exactly to fp32 and round alike to fp16 (the documented
    # residual case is the other way round: fp32/fp16 weights *loaded in* bf16)
    torch.manual_seed(0)
    stored = {"a.attn2.to_k": torch.randn(8, 4).bfloat16(), "a.attn2.to_v": (torch.randn(8, 4) * 1e-6).bfloat16()}
    as_bf16 = base_model_fingerprint(stored)
    assert base_model_fingerprint({k: v.float() for k, v in stored.items()}) == as_bf16
    assert base_model_fingerprint({k: v.half() for k, v in stored.items()}) == as_bf16
    assert base_model_fingerprint({k: v.float().half().float() for k, v in stored.items()}) == as_bf16


def test_vae_round_trip_shapes(tiny_bundle):
    images = torch.rand(2, 3, 16, 16)
    latents = tiny_bundle.denoiser.encode_images(images)
    assert latents.shape == (2, 4, 8, 8)
    decoded = tiny_bundle.denoiser.decode_latents(latents)
    assert decoded.shape == images.shape and decoded.min() >= 0 and decoded.max() <= 1
