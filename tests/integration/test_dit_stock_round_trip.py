"""A diffusion-transformer adapter's stock file (one ``diff`` per block on the fused text ``qkv``
weight, zero Q rows) loads through ComfyUI's own LoRA loading, unmodified, on the tiny Flux.1-
and SD3.5-architecture models of ``tiny_dit_comfy``: every key loads, the patched weight is
``W0 + s * [0; dK; dV]`` (fp8-stored weights included), and TextLoc Apply Adapter patches the
model with exactly the same tensors, so a model from either path computes the same output bit
for bit. ``comfy.sd.load_lora_for_models`` is what the stock LoraLoader and
LoraLoaderModelOnly nodes run. In a real ComfyUI server, images sampled through the stock
LoraLoader and through Apply Adapter are pixel-identical (a prompt without the token: the stock
embedding cannot hold the token's T5 part, docs/adapters.md).
"""

from __future__ import annotations

import logging
import uuid

import numpy as np
import pytest
import tiny_dit_comfy as tiny
import torch
from comfy_server import sample_graph, single_image

LAYERS = {
    "flux": ("double_blocks.{}.txt_attn", tiny.FLUX_DOUBLE_BLOCKS),
    "sd3": ("joint_blocks.{}.context_block.attn", tiny.SD3_JOINT_BLOCKS),
}


TOKEN_WIDTH = {"flux": tiny.FLUX_T5 + tiny.WIDTH_L, "sd3": tiny.WIDTH_L + tiny.WIDTH_G + tiny.SD3_T5}


def _adapter(model, family: str):
    """An adapter with random K/V deltas for every joint block of ``model`` (base fingerprint and
    architecture its own, as Train would record them) and one random token of the family's
    width (``[T5 | CLIP-L]`` or ``[CLIP-L | CLIP-G | T5]``)."""
    from textloc_core.adapters import adapter as ad
    from textloc_core.adapters.formats import text_kv_from_fused
    from textloc_core.backends.fingerprint import base_model_fingerprint

    base = text_kv_from_fused(model.model.diffusion_model.state_dict())
    layer, blocks = LAYERS[family]
    assert sorted(base) == sorted(f"{layer.format(i)}.{p}" for i in range(blocks) for p in ("to_k", "to_v"))
    gen = torch.Generator().manual_seed(7)
    deltas = {key: 0.05 * torch.randn(w.shape, generator=gen) for key, w in base.items()}
    meta = ad.AdapterMetadata(
        base_fingerprint=base_model_fingerprint(base),
        architecture=ad.architecture_signature(base),
        concepts=[{"name": "doll", "token": "<doll1>", "class_word": "doll", "init_word": None}],
        guidance="hard",
    )
    return ad.Adapter(deltas, {"<doll1>": torch.randn(1, TOKEN_WIDTH[family], generator=gen)}, meta)


def _output(model, family: str) -> torch.Tensor:
    """The patched diffusion model's output on fixed inputs (ComfyUI patches, computes, unpatches)."""
    import comfy.model_management as mm

    base = model.model
    gen = torch.Generator().manual_seed(1)
    side = tiny.IMAGE_SIZE // tiny.VAE_FACTOR
    x = torch.randn(1, tiny.LATENT_CHANNELS, side, side, generator=gen)
    if family == "flux":
        context, pooled = torch.randn(1, 12, tiny.FLUX_T5, generator=gen), torch.randn(1, tiny.WIDTH_L, generator=gen)
        extra = {"guidance": torch.tensor([3.5])}
    else:
        context = torch.randn(1, 20, tiny.SD3_T5, generator=gen)
        pooled, extra = torch.randn(1, tiny.WIDTH_L + tiny.WIDTH_G, generator=gen), {}
    with torch.inference_mode():  # as ComfyUI runs nodes
        mm.load_models_gpu([model], force_full_load=True)
        return base.diffusion_model(
            x, base.model_sampling.timestep(torch.tensor([0.6])), context=context, y=pooled, **extra
        )


@pytest.mark.parametrize("weight_dtype", [None, torch.float8_e4m3fn], ids=["fp32", "fp8"])
@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_stock_lora_loading_applies_the_qkv_patch_as_apply_adapter_does(pack, family, weight_dtype, tmp_path, caplog):
    import comfy.sd
    import comfy.utils
    from textloc_pack.nodes.apply_node import apply_adapter

    from textloc_core.adapters import formats as fmt

    with torch.inference_mode():
        model = tiny.build_model(family, seed=2, weight_dtype=weight_dtype)
    adapter = _adapter(model, family)
    path = fmt.write_comfy_unet_patch(adapter, tmp_path / "loras" / f"{family}.safetensors")
    lora = comfy.utils.load_torch_file(str(path), safe_load=True)
    layer, blocks = LAYERS[family]
    assert sorted(lora) == [f"diffusion_model.{layer.format(i)}.qkv.diff" for i in range(blocks)]

    with caplog.at_level(logging.WARNING):
        stock, _ = comfy.sd.load_lora_for_models(model, None, lora, 0.7, 0)
    assert not [r for r in caplog.records if "not loaded" in r.getMessage().lower() or "MISMATCH" in r.getMessage()]
    assert set(stock.patches) == {f"diffusion_model.{layer.format(i)}.qkv.weight" for i in range(blocks)}
    ours, _ = apply_adapter(model, None, adapter, 0.7)
    assert set(ours.patches) == set(stock.patches)

    base = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    with torch.inference_mode():  # as ComfyUI runs nodes (0.3.64's fp8 rounding needs it)
        stock.patch_model()
    try:
        state = stock.model.diffusion_model.state_dict()
        for i in range(blocks):
            key = f"{layer.format(i)}.qkv.weight"
            w0 = base[key].float()
            rows = w0.shape[0] // 3
            got = state[key].float()
            if weight_dtype is None:  # Q rows untouched (fp8: 0.3.64 re-rounds the whole weight)
                torch.testing.assert_close(got[:rows], w0[:rows], rtol=0, atol=0)
            want = w0 + 0.7 * fmt.fused_qkv_diff(
                {p: adapter.kv_deltas[f"{layer.format(i)}.{p}"] for p in ("to_k", "to_v")}, layer.format(i)
            )
            if weight_dtype is None:
                torch.testing.assert_close(got, want)
            else:  # ComfyUI rounds the patched weight back to fp8 (stochastically): within one step
                torch.testing.assert_close(got, want, rtol=2**-3, atol=2**-9)
    finally:
        with torch.inference_mode():
            stock.unpatch_model()
    assert all(torch.equal(v, model.model.diffusion_model.state_dict()[k]) for k, v in base.items())
    stock_out = _output(stock, family)
    assert torch.isfinite(stock_out).all() and torch.equal(stock_out, _output(ours, family))
    assert not torch.equal(stock_out, _output(model, family))


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_stock_lora_loader_and_apply_adapter_sample_the_same_pixels(comfy, pack, family):
    """The stock patch file through ComfyUI's own LoraLoader node == the adapter file through
    TextLoc Apply Adapter, sampled in a real ComfyUI (and different from the base model)."""
    from textloc_core.adapters.adapter import save_adapter
    from textloc_core.adapters.formats import write_comfy_unet_patch

    seed = 4  # the loader builds the same weights from it; the server caches the loaded model
    with torch.inference_mode():
        adapter = _adapter(tiny.build_model(family, seed=seed), family)
    name = f"dit_{family}_{uuid.uuid4().hex[:6]}"
    models = comfy.layout.models
    save_adapter(adapter, models / "textloc" / f"{name}.safetensors")
    write_comfy_unet_patch(adapter, models / "loras" / "textloc" / f"{name}.safetensors")
    loader = {
        "class_type": "TextLocTestTinyDiTLoader",
        "inputs": {"family": family, "seed": seed, "weight_dtype": "default"},
    }
    apply = {"model": ["1", 0], "clip": ["1", 1], "adapter_file": f"{name}.safetensors", "strength": 0.8}
    stock = {"model": ["1", 0], "clip": ["1", 1], "lora_name": f"textloc/{name}.safetensors"}
    stock.update(strength_model=0.8, strength_clip=0.8)
    text = "a photo of a doll on the table"
    graphs = {
        "ours": sample_graph(
            loader,
            ["2", 0],
            ["2", 1],
            text,
            f"dit_test/ours_{family}",
            {"2": {"class_type": "TextLocApplyAdapter", "inputs": apply}},
        ),
        "stock": sample_graph(
            loader,
            ["2", 0],
            ["2", 1],
            text,
            f"dit_test/stock_{family}",
            {"2": {"class_type": "LoraLoader", "inputs": stock}},
        ),
        "base": sample_graph(loader, ["1", 0], ["1", 1], text, f"dit_test/base_{family}", {}),
    }
    images = {what: single_image(comfy.run(graph, timeout=600)) for what, graph in graphs.items()}
    assert np.array_equal(images["ours"], images["stock"]), np.abs(images["ours"] - images["stock"]).max()
    assert not np.array_equal(images["ours"], images["base"]), "the adapter changed nothing"
    lines = [line for line in comfy.log_text().splitlines() if name in line or "lora key" in line]
    assert not [line for line in lines if "not loaded" in line.lower()], lines


def test_the_stock_embedding_gives_the_clip_parts_and_t5_drops_it(pack, tmp_path, caplog):
    """SD3.5: ``embedding:NAME`` with our file puts the CLIP-L and CLIP-G slices in their token
    lists; T5 finds no ``t5xxl`` tensor, takes the file's first one (narrower than T5) and drops
    it with ComfyUI's "shape mismatch" warning (docs/adapters.md)."""
    from textloc_core.adapters import formats as fmt

    token = torch.randn(1, TOKEN_WIDTH["sd3"])
    sizes = {"clip_l": tiny.WIDTH_L, "clip_g": tiny.WIDTH_G, "t5": tiny.SD3_T5}
    fmt.write_comfy_embedding(token, tmp_path / "doll.safetensors", sizes)
    clip = tiny.build_clip("sd3", seed=1, embedding_directory=str(tmp_path))
    tokens = clip.tokenize("a photo of embedding:doll toy")
    placed = {key: [e[0] for chunk in tokens[key] for e in chunk if torch.is_tensor(e[0])] for key in tokens}
    assert torch.equal(placed["l"][0], token[0, : tiny.WIDTH_L])
    assert torch.equal(placed["g"][0], token[0, tiny.WIDTH_L : tiny.WIDTH_L + tiny.WIDTH_G])
    ((first,),) = [placed["t5xxl"]]  # the file's first tensor, a CLIP slice
    assert first.shape[-1] in (tiny.WIDTH_L, tiny.WIDTH_G)
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        clip.encode_from_tokens(tokens)
    assert any("shape mismatch" in r.getMessage() for r in caplog.records)
