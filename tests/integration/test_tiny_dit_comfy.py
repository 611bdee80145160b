"""The tiny Flux- and SD3.5-architecture models of ``tiny_dit_comfy`` are what ComfyUI builds for
those families: its model classes and sampling, its text encoders' token layout and widths, a
16-channel VAE, and fp8 weights as UNETLoader's ``weight_dtype`` option stores them."""

from __future__ import annotations

import pytest
import tiny_dit_comfy as tiny
import torch


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_tiny_models_are_comfyuis_flux_and_sd3(pack, family):
    import comfy.model_base
    import comfy.model_sampling

    with torch.inference_mode():
        model, clip, vae = tiny.build_all(family)
        base = model.model
        tokens = clip.tokenize("a photo of a star")
        context, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
        latents = vae.encode(torch.rand(1, tiny.IMAGE_SIZE, tiny.IMAGE_SIZE, 3))
        extra = {"guidance": torch.tensor([3.5])} if family == "flux" else {}
        sigma = torch.tensor([0.5])
        out = base.diffusion_model(
            base.latent_format.process_in(latents),
            base.model_sampling.timestep(sigma),
            context=context,
            y=pooled,
            transformer_options={},
            **extra,
        )
    assert all(torch.isfinite(x).all() for x in (context, pooled, latents, out))
    side = tiny.IMAGE_SIZE // tiny.VAE_FACTOR
    assert latents.shape == (1, tiny.LATENT_CHANNELS, side, side) and out.shape == latents.shape
    if family == "flux":
        assert isinstance(base, comfy.model_base.Flux)
        assert isinstance(base.model_sampling, comfy.model_sampling.ModelSamplingFlux)
        assert sorted(tokens) == ["l", "t5xxl"] and len(tokens["t5xxl"][0]) == 256  # Flux pads T5 to 256
        assert context.shape == (1, 256, tiny.FLUX_T5) and pooled.shape == (1, tiny.WIDTH_L)
        assert len(base.diffusion_model.double_blocks) == tiny.FLUX_DOUBLE_BLOCKS
    else:
        assert isinstance(base, comfy.model_base.SD3) and base.model_sampling.shift == 3.0
        assert sorted(tokens) == ["g", "l", "t5xxl"]
        # [CLIP-L | CLIP-G zero-padded to 4096] (77) then T5 (77), pooled = CLIP-L + CLIP-G
        assert context.shape == (1, 154, tiny.SD3_T5) and pooled.shape == (1, tiny.WIDTH_L + tiny.WIDTH_G)
        assert context[0, :77, tiny.WIDTH_L + tiny.WIDTH_G :].abs().max() == 0
        assert len(base.diffusion_model.joint_blocks) == tiny.SD3_JOINT_BLOCKS
        assert base.diffusion_model.joint_blocks[-1].context_block.pre_only


def test_fp8_weights_are_stored_as_unetloader_stores_them(pack):
    with torch.inference_mode():
        plain = tiny.build_model("flux", seed=3)
        fp8 = tiny.build_model("flux", seed=3, weight_dtype=torch.float8_e4m3fn)
    qkv = "double_blocks.0.txt_attn.qkv.weight"
    stored = fp8.model.diffusion_model.state_dict()[qkv]
    assert stored.dtype == torch.float8_e4m3fn and fp8.model.manual_cast_dtype == torch.float32
    expected = plain.model.diffusion_model.state_dict()[qkv].to(torch.float8_e4m3fn)
    assert torch.equal(stored.float(), expected.float())
