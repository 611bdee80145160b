"""SDXL-architecture models through nodes/comfy_backend.py, in-process in a real ComfyUI.

A tiny random model built as ComfyUI builds SDXL (``tiny_sdxl_comfy``: ``supported_models.SDXL``
with a small unet_config, the ``sdxl_clip`` tokenizer/model pair with narrow encoders): token
positions in both encoders, gradients to both slices of a token, the adm vector from the
pooled output, training with every guidance (with prior images through the file cache), and
gradient checkpointing that changes memory, not gradients.
"""

from __future__ import annotations

import pytest
import tiny_sdxl_comfy as tiny
import torch

from benchmarks.tiny_models import TINY_SDXL_TRAINING


@pytest.fixture(scope="module")
def sdxl(pack):
    with torch.inference_mode():  # as every ComfyUI node runs
        return tiny.build_all(seed=0)


def _square(top, left, size=24, side=64):
    mask = torch.zeros(side, side)
    mask[top : top + size, left : left + size] = 1
    return mask


def test_both_encoders_place_the_token_and_the_adm_carries_the_pooled_vector(pack, sdxl):
    comfy_backend, _ = pack
    from textloc_pack.textloc_core.attention.cross_attention import AttentionRouter, KVDeltaInjector

    model, clip, vae = sdxl
    with torch.inference_mode(), comfy_backend.training_session(model, clip, vae) as bundle:
        assert bundle.denoiser.needs_pooled and bundle.text.embedding_dim == tiny.WIDTH_L + tiny.WIDTH_G
        assert bundle.text.encoder_sizes == [("clip_l", tiny.WIDTH_L), ("clip_g", tiny.WIDTH_G)]
        token = torch.nn.Parameter(bundle.text.initial_embedding("star"))
        encoded = bundle.text.encode(["a <tw1> star on grass", "<tw1>, and a <tw1>"], {"<tw1>": token})
        assert encoded.token_positions == [{"<tw1>": [2]}, {"<tw1>": [1, 5]}]
        assert encoded.context.shape == (2, 77, tiny.WIDTH_L + tiny.WIDTH_G) and encoded.pooled.shape == (
            2,
            tiny.POOLED,
        )
        latents = bundle.denoiser.encode_images(torch.rand(2, 3, 64, 64))
        router = AttentionRouter(layers=None, token_slots=torch.tensor([[2], [1]]))
        with KVDeltaInjector(bundle.denoiser.unet) as deltas, bundle.denoiser.route_attention(router):
            out = bundle.denoiser.predict(latents, torch.tensor([10, 600]), encoded.context, encoded.pooled)
            loss = out.square().mean() + sum(m.probs.mean() for m in router.captured)
            loss.backward()
        assert len(router.captured) == 11  # every attn2 of the tiny SDXL UNet
        assert token.grad[0, : tiny.WIDTH_L].abs().sum() > 0 and token.grad[0, tiny.WIDTH_L :].abs().sum() > 0
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in deltas.parameters())
        # the pooled vector reaches the UNet (through the adm vector), and is required
        with torch.no_grad():
            swapped = bundle.denoiser.predict(latents, torch.tensor([10, 600]), encoded.context, encoded.pooled.flip(0))
        assert (swapped - out.detach()).abs().max() > 1e-5
        with pytest.raises(ValueError, match="pooled"):
            bundle.denoiser.predict(latents, torch.tensor([10, 600]), encoded.context)


def test_the_adm_vector_is_the_one_comfyuis_sampler_builds(pack, sdxl):
    """Same pooled output and size as ComfyUI's own conditioning path for a latent of that size."""
    comfy_backend, _ = pack
    model, clip, vae = sdxl
    pooled = torch.randn(2, tiny.POOLED)
    ours = comfy_backend.size_conditioning(model.model, pooled, 64, 48)
    stock = model.model.extra_conds(pooled_output=pooled, width=48, height=64, device=torch.device("cpu"))["y"].cond
    torch.testing.assert_close(ours, stock)


@pytest.mark.parametrize("method", ["hard", "soft", "none"])
def test_every_guidance_trains_sdxl_in_comfyui(pack, sdxl, method, tmp_path, monkeypatch):
    comfy_backend, _ = pack
    from textloc_pack.textloc_core.data.concepts import Concept, ConceptImage, ConceptSet
    from textloc_pack.textloc_core.training import prior
    from textloc_pack.textloc_core.training.config import TrainConfig
    from textloc_pack.textloc_core.training.loop import train

    monkeypatch.setattr(prior, "_MEMORY", {})
    torch.manual_seed(1)
    concepts = ConceptSet(
        [Concept("star", "<star1>", "star")],
        [
            ConceptImage(torch.rand(3, 64, 64), {"star": _square(4, 4)}),
            ConceptImage(torch.rand(3, 64, 64), {"star": _square(30, 20)}),
        ],
    )
    config = TrainConfig(guidance=method, **TINY_SDXL_TRAINING)
    model, clip, vae = sdxl
    with torch.inference_mode(), comfy_backend.training_session(model, clip, vae) as bundle:
        result = train(bundle, concepts, config, prior_cache_dir=tmp_path)
    assert result.steps_done == 2 and len(list(tmp_path.glob("prior-*.safetensors"))) == 1
    assert (result.history[0]["attention"] > 0) == (method != "none") and result.history[0]["prior"] > 0
    assert len(result.kv_deltas) == 22 and all(
        d.shape[1] == tiny.WIDTH_L + tiny.WIDTH_G for d in result.kv_deltas.values()
    )
    assert result.token_embeddings["<star1>"].shape == (1, tiny.WIDTH_L + tiny.WIDTH_G)


@pytest.mark.parametrize("model_kind", ["sdxl", "tinyworld"])
def test_gradient_checkpointing_gives_the_same_gradients(pack, sdxl, model_kind):
    comfy_backend, tinyworld_models = pack
    from textloc_pack.textloc_core.attention.cross_attention import AttentionRouter, KVDeltaInjector

    with torch.inference_mode():
        model, clip, vae = sdxl if model_kind == "sdxl" else tinyworld_models.build_all(seed=0, use_weights=False)
    grads = []
    for checkpointing in (False, True):
        with torch.inference_mode(), comfy_backend.training_session(model, clip, vae) as bundle:
            denoiser = bundle.denoiser
            token = torch.nn.Parameter(bundle.text.initial_embedding("star"))
            encoded = bundle.text.encode(["a <tw1> star on grass"], {"<tw1>": token})
            latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
            router = AttentionRouter(layers=None, token_slots=torch.tensor([[2]]), keep_grad=True)
            with KVDeltaInjector(denoiser.unet) as deltas, denoiser.route_attention(router):
                for p in deltas.parameters():
                    torch.nn.init.normal_(p, std=1e-2, generator=torch.Generator().manual_seed(3))
                context = denoiser.gradient_checkpointing() if checkpointing else torch.enable_grad()
                with context:
                    out = denoiser.predict(latents, torch.tensor([500]), encoded.context, encoded.pooled)
                    maps = torch.stack([m.probs.float().mean() for m in router.captured]).sum()
                    forward_calls = len(router.captured)
                    (out.square().mean() + maps).backward()
                # with checkpointing the backward pass ran every attn2 again (and captured it again)
                assert len(router.captured) == forward_calls * (2 if checkpointing else 1)
                grads.append([token.grad.clone()] + [p.grad.clone() for p in deltas.parameters()])
            assert not any("forward" in vars(b) for b in denoiser.unet.modules())  # wrappers removed
    assert len(grads[0]) == len(grads[1])
    for plain, recomputed in zip(*grads):
        torch.testing.assert_close(recomputed, plain, atol=1e-5, rtol=1e-4)
