"""Stock files of diffusion-transformer adapters (Flux, SD3.5): the K/V deltas of a block become
one ``diff`` on ComfyUI's fused text ``qkv`` weight with zero Q rows, UNet keys stay as they
were, and the embedding file leaves out the T5 slice, which only the adapter file can hold.
(That ComfyUI's own loaders read them as intended: tests/integration/test_dit_stock_round_trip.py.)
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from textloc_core.adapters import adapter as ad
from textloc_core.adapters import formats as fmt

FAMILIES = {
    # canonical K/V layer, its ComfyUI fused weight, (rows, columns) of one projection
    "flux": ("double_blocks.{}.txt_attn", 6, 4),
    "sd3": ("joint_blocks.{}.context_block.attn", 4, 4),
}


def _adapter(family: str, blocks: int = 2, embedding_width: int = 8) -> ad.Adapter:
    layer, rows, columns = FAMILIES[family]
    gen = torch.Generator().manual_seed(3)
    deltas = {
        f"{layer.format(i)}.{proj}": torch.randn(rows, columns, generator=gen)
        for i in range(blocks)
        for proj in ("to_k", "to_v")
    }
    meta = ad.AdapterMetadata(
        base_fingerprint="tiny",
        architecture=ad.architecture_signature(deltas),
        concepts=[{"name": "doll", "token": "<doll1>", "class_word": "doll", "init_word": None}],
        guidance="hard",
    )
    return ad.Adapter(deltas, {"<doll1>": torch.randn(1, embedding_width, generator=gen)}, meta)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_kv_deltas_become_one_qkv_diff_per_block_with_zero_q_rows(family, tmp_path):
    adapter = _adapter(family)
    layer, rows, columns = FAMILIES[family]
    path = fmt.write_comfy_unet_patch(adapter, tmp_path / "patch.safetensors")
    tensors = load_file(str(path))
    assert sorted(tensors) == [f"diffusion_model.{layer.format(i)}.qkv.diff" for i in range(2)]
    for i in range(2):
        q, k, v = tensors[f"diffusion_model.{layer.format(i)}.qkv.diff"].split(rows)
        assert tuple(q.shape) == (rows, columns) and not q.any()
        assert torch.equal(k, adapter.kv_deltas[f"{layer.format(i)}.to_k"])
        assert torch.equal(v, adapter.kv_deltas[f"{layer.format(i)}.to_v"])


def test_a_flux_patch_adds_to_the_diffusers_projections_it_was_trained_on(tiny_flux_bundle):
    """ComfyUI's fused text qkv is diffusers' add_q / add_k / add_v stacked in that order: the
    patched fused weight, split again, is the base plus the K and V deltas."""
    attn = tiny_flux_bundle.denoiser.unet.transformer_blocks[1].attn
    shape = tuple(attn.add_k_proj.weight.shape)
    gen = torch.Generator().manual_seed(0)
    deltas = {"to_k": torch.randn(shape, generator=gen), "to_v": torch.randn(shape, generator=gen)}
    fused = torch.cat([attn.add_q_proj.weight, attn.add_k_proj.weight, attn.add_v_proj.weight]).detach()
    q, k, v = (fused + 0.5 * fmt.fused_qkv_diff(deltas, "double_blocks.1.txt_attn")).split(shape[0])
    assert torch.equal(q, attn.add_q_proj.weight)
    torch.testing.assert_close(k, attn.add_k_proj.weight + 0.5 * deltas["to_k"])
    torch.testing.assert_close(v, attn.add_v_proj.weight + 0.5 * deltas["to_v"])


def test_unet_keys_keep_their_own_diff():
    deltas = {"input_blocks.1.1.transformer_blocks.0.attn2.to_k": torch.ones(2, 3)}
    meta = ad.AdapterMetadata(
        base_fingerprint="x", architecture=ad.architecture_signature(deltas), concepts=[], guidance="none"
    )
    patch = fmt.comfy_unet_patch(ad.Adapter(deltas, {}, meta))
    assert list(patch) == ["diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.diff"]


def test_a_fused_patch_refuses_other_projections_and_mixed_shapes():
    with pytest.raises(ValueError, match="takes to_k / to_v deltas, got \\['to_q'\\]"):
        fmt.fused_qkv_diff({"to_q": torch.zeros(2, 2)}, "double_blocks.0.txt_attn")
    with pytest.raises(ValueError, match="differ in shape"):
        fmt.fused_qkv_diff({"to_k": torch.zeros(2, 2), "to_v": torch.zeros(3, 2)}, "double_blocks.0.txt_attn")
    only_v = fmt.fused_qkv_diff({"to_v": torch.ones(2, 2)}, "double_blocks.0.txt_attn")
    assert not only_v[:4].any() and only_v[4:].eq(1).all()


def test_the_embedding_file_leaves_out_the_t5_output_slice(tmp_path):
    flux = torch.arange(2 * 12, dtype=torch.float32).reshape(2, 12)  # [T5 8 | CLIP-L 4]
    path = fmt.write_comfy_embedding(flux, tmp_path / "flux.safetensors", {"t5": 8, "clip_l": 4})
    assert {k: v.tolist() for k, v in load_file(str(path)).items()} == {"clip_l": flux[:, 8:].tolist()}
    sd3 = torch.randn(1, 4 + 6 + 8)  # [CLIP-L | CLIP-G | T5]
    path = fmt.write_comfy_embedding(sd3, tmp_path / "sd3.safetensors", {"clip_l": 4, "clip_g": 6, "t5": 8})
    tensors = load_file(str(path))
    assert sorted(tensors) == ["clip_g", "clip_l"] and torch.equal(tensors["clip_g"], sd3[:, 4:10])
    with pytest.raises(ValueError, match="output space; no stock embedding file can hold it, the adapter file does"):
        fmt.write_comfy_embedding(torch.randn(1, 8), tmp_path / "t5.safetensors", {"t5": 8})
