"""The store-everything reference mode computes the same thing as the efficient path.

The performance benchmark compares our capture (explicit softmax only at the loss's layers,
only the tracked tokens kept) with the paper's way (explicit attention everywhere, every map
of every token stored). That comparison is fair only if both train the same function: same
loss, same gradients. These tests check that on a tiny model, in float64 so that the only
difference left (fused vs explicit self-attention) is far below the tolerance.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.reference_mode import (
    StoreEverythingDenoiser,
    StoreEverythingRouter,
    explicit_self_attention,
    store_everything_bundle,
)
from textloc_core.attention.cross_attention import AttentionRouter, KVDeltaInjector, find_cross_attention

TOKEN = "<doll1>"


def _loss_and_grads(bundle, seed: int = 0):
    """One attention-guided training loss on the tiny model; returns (loss, grads by name, router)."""
    from textloc_core.attention import guidance, maps
    from textloc_core.sampling import schedule

    bundle.denoiser.unet.double()
    bundle.text.text_encoders[0].double()
    torch.manual_seed(seed)
    latents = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    noise = torch.randn_like(latents)
    timesteps = torch.tensor([100, 700])
    masks = torch.zeros(2, 1, 8, 8, dtype=torch.float64)
    masks[0, 0, 2:6, 1:5] = 1
    masks[1, 0, 0:4, 3:8] = 1

    token = torch.nn.Parameter(bundle.text.initial_embedding("doll").double())
    with KVDeltaInjector(bundle.denoiser.unet) as injector:
        with torch.no_grad():  # non-zero deltas, so the K/V gradients depend on both paths alike
            for delta in injector.parameters():
                delta.normal_(0, 0.02)
        for delta in injector.parameters():
            delta.data = delta.data.double()
        encoded = bundle.text.encode([f"photo of a {TOKEN} doll", f"a {TOKEN} doll on grass"], {TOKEN: token})
        layout = maps.slot_layout(encoded.token_positions, [TOKEN])
        router = AttentionRouter(layers=None, token_slots=layout.slots)
        with bundle.denoiser.route_attention(router):
            noisy = schedule.add_noise(latents, noise, timesteps)
            pred = bundle.denoiser.predict(noisy, timesteps, encoded.context)
        token_maps = maps.token_maps(router.captured, layout, (8, 8))
        loss = torch.nn.functional.mse_loss(pred, noise) + guidance.attention_loss(
            "hard", token_maps, masks, layout.present
        )
        params = {"token": token, **injector.deltas}
        grads = torch.autograd.grad(loss, list(params.values()))
    return loss.detach(), dict(zip(params, grads)), router


def test_reference_mode_trains_the_same_function(tiny_bundle):
    """Same loss and same gradients (token embedding and every K/V delta) as the efficient path."""
    efficient_loss, efficient_grads, efficient_router = _loss_and_grads(tiny_bundle)
    reference = store_everything_bundle(tiny_bundle)
    reference_loss, reference_grads, reference_router = _loss_and_grads(reference)

    assert torch.allclose(reference_loss, efficient_loss, rtol=1e-10, atol=0)
    assert set(reference_grads) == set(efficient_grads)
    for name, grad in efficient_grads.items():
        assert grad.abs().sum() > 0, f"{name} got no gradient; the comparison would prove nothing"
        torch.testing.assert_close(reference_grads[name], grad, rtol=1e-8, atol=1e-12, msg=f"gradient of {name}")
    # the caller's router got exactly the maps it would have captured itself
    assert [m.layer for m in reference_router.captured] == [m.layer for m in efficient_router.captured]


def test_reference_mode_stores_every_map_and_explicit_self_attention(tiny_bundle):
    """Every attn2 layer's full (B, heads, N, 77) maps are stored; attn1 runs explicitly."""
    from diffusers.models.attention_processor import AttnProcessor

    unet = tiny_bundle.denoiser.unet
    original = {name: m.processor for name, m in unet.named_modules() if name.endswith("attn1")}
    reference = StoreEverythingDenoiser(tiny_bundle.denoiser)
    target = AttentionRouter(
        layers={"input_blocks.1.1.transformer_blocks.0.attn2"}, token_slots=torch.tensor([[1], [1]])
    )
    context = torch.randn(2, 77, 32)
    with reference.route_attention(target):
        assert all(isinstance(m.processor, AttnProcessor) for n, m in unet.named_modules() if n.endswith("attn1"))
        with torch.no_grad():
            reference.predict(torch.randn(2, 4, 8, 8), torch.tensor([10, 20]), context)
    store = reference.last_router
    assert isinstance(store, StoreEverythingRouter)
    assert len(store.stored) == len(find_cross_attention(unet))
    for probs in store.stored.values():
        assert probs.shape[:2] == (2, 8) and probs.shape[-1] == 77
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
    # only the layer the caller selected reaches the caller
    assert [m.layer for m in target.captured] == ["input_blocks.1.1.transformer_blocks.0.attn2"]
    # the model is restored exactly on exit
    assert {n: m.processor for n, m in unet.named_modules() if n.endswith("attn1")} == original
    assert all(type(m.processor).__name__ != "_RoutedProcessor" for m in find_cross_attention(unet).values())


def test_explicit_self_attention_refuses_models_without_diffusers_attention():
    with pytest.raises(ValueError, match="attn1"):
        with explicit_self_attention(torch.nn.Linear(2, 2)):
            pass


def test_the_trainer_trains_the_reference_like_the_efficient_path(tiny_parts):
    """``train`` on ``store_everything_bundle`` (no trainer change) gives the same losses and
    the same learned K/V deltas and token as on the plain bundle: the benchmark times one
    function two ways. Two concepts, one of them absent from an image, prior loss on."""
    from textloc_core.backends.diffusers_backend import bundle_from_diffusers
    from textloc_core.data.concepts import Concept, ConceptImage, ConceptSet
    from textloc_core.training.config import TrainConfig
    from textloc_core.training.loop import train

    def square(top, left):
        mask = torch.zeros(16, 16)
        mask[top : top + 6, left : left + 6] = 1
        return mask

    torch.manual_seed(5)
    concepts = [Concept("doll", "<doll1>", "doll"), Concept("bucket", "<bucket1>", "bucket")]
    images = [
        ConceptImage(torch.rand(3, 16, 16), {"doll": square(1, 1), "bucket": square(9, 8)}),
        ConceptImage(torch.rand(3, 16, 16), {"bucket": square(2, 9)}),
    ]
    config = TrainConfig(guidance="hard", steps=2, learning_rate=1e-3, prior_images=2, prior_sampling_steps=2)
    bundle = bundle_from_diffusers(**tiny_parts)
    efficient = train(bundle, ConceptSet(concepts, images), config)
    reference_bundle = store_everything_bundle(bundle)
    reference = train(reference_bundle, ConceptSet(concepts, images), config)

    assert reference_bundle.denoiser.last_router.stored, "the reference mode stored no maps"
    for mine, theirs in zip(efficient.history, reference.history):
        assert theirs["attention"] > 0
        assert theirs == pytest.approx(mine, rel=1e-4)
    # Adam's update is ~ lr x sign(grad), so where a gradient is ~0 the last-bit difference of
    # fused vs explicit self-attention can flip it: allow 10% of one step, far below what a
    # different loss would move (a whole step each time); one step is the effective lr
    # (learning_rate x images per step, 4e-3 here)
    for key, delta in efficient.kv_deltas.items():
        assert delta.abs().sum() > 0
        torch.testing.assert_close(
            reference.kv_deltas[key], delta, rtol=1e-3, atol=0.1 * config.effective_learning_rate
        )
    for token, vector in efficient.token_embeddings.items():
        torch.testing.assert_close(reference.token_embeddings[token], vector, rtol=1e-4, atol=1e-6)
