"""Our ComfyUI files load through ComfyUI's own, unmodified loaders.

* UNet patch file -> ``comfy.utils.load_torch_file`` + ``comfy.sd.load_lora_for_models`` (exactly
  what stock LoraLoaderModelOnly runs) on a real ComfyUI SD1-type model with TinyWorld's
  shape; patched weights must equal ``W0 + strength * delta`` and every key must load.
* Embedding file -> ``comfy.sd1_clip.load_embed`` and the stock SD1 tokenizer's
  ``embedding:NAME`` handling (what CLIPTextEncode runs).

Skips LOUDLY when no ComfyUI tree is found ($COMFYUI_DIR or ~/ComfyUI); fails instead when
TEXTLOC_REQUIRE_COMFYUI is set.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest
import torch

from textloc_core import adapter as ad
from textloc_core import adapter_formats as fmt
from textloc_core.tinyworld import model_configs as mc

COMFY = Path(os.environ.get("COMFYUI_DIR", Path.home() / "ComfyUI"))


@pytest.fixture(scope="module")
def comfy(not_run):
    if not (COMFY / "comfy" / "lora.py").is_file():
        not_run("ComfyUI adapter-format tests", f"no ComfyUI tree at {COMFY}; set COMFYUI_DIR", "TEXTLOC_REQUIRE_COMFYUI")
    if str(COMFY) not in sys.path:
        sys.path.insert(0, str(COMFY))
    import comfy.cli_args

    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True  # a CUDA build of torch without a GPU: do not probe one
    import comfy.lora
    import comfy.model_patcher
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models
    import comfy.utils

    return comfy


@pytest.fixture(scope="module")
def comfy_model(comfy):
    torch.manual_seed(0)
    model = comfy.supported_models.SD15(mc.comfy_unet_config()).get_model({})
    with torch.no_grad():  # ComfyUI skips weight init: the tensors hold leftover memory, sometimes NaN
        for param in model.parameters():
            param.normal_(0.0, 0.02)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def base_kv(patcher) -> dict[str, torch.Tensor]:
    return {
        name[: -len(".weight")]: weight.detach().clone()
        for name, weight in patcher.model.diffusion_model.state_dict().items()
        if ".attn2.to_k.weight" in name or ".attn2.to_v.weight" in name
    }


def make_adapter(weights, seed=5) -> ad.Adapter:
    gen = torch.Generator().manual_seed(seed)
    meta = ad.AdapterMetadata(
        base_fingerprint="tiny",
        architecture=ad.architecture_signature(weights),
        concepts=[{"name": "doll", "token": "<doll1>", "class_word": "doll", "init_word": None}],
        method="hard",
    )
    deltas = {k: torch.randn(w.shape, generator=gen) for k, w in weights.items()}
    return ad.Adapter(deltas, {"<doll1>": torch.randn(1, 768, generator=gen)}, meta)


def test_stock_lora_loader_applies_the_unet_patch(comfy, comfy_model, tmp_path, caplog):
    weights = base_kv(comfy_model)
    assert len(weights) >= 8, "the tiny ComfyUI model should have several attn2 layers"
    adapter = make_adapter(weights)
    files = fmt.write_comfy_files(adapter, tmp_path / "loras", tmp_path / "embeddings", "doll")

    lora = comfy.utils.load_torch_file(str(files["unet_patch"]), safe_load=True)
    assert all(key.startswith("diffusion_model.") and key.endswith(".diff") for key in lora)
    with caplog.at_level(logging.WARNING):
        patched, _ = comfy.sd.load_lora_for_models(comfy_model, None, lora, 0.7, 0)
    assert not [r for r in caplog.records if "not loaded" in r.getMessage() or "NOT LOADED" in r.getMessage()]
    assert set(patched.patches) == {f"diffusion_model.{k}.weight" for k in weights}

    patched.patch_model()
    try:
        state = patched.model.diffusion_model.state_dict()
        for key, w0 in weights.items():
            torch.testing.assert_close(state[f"{key}.weight"], w0 + 0.7 * adapter.kv_deltas[key])
    finally:
        patched.unpatch_model()
    for key, w0 in weights.items():  # ComfyUI's unpatch restores the base: nothing of ours lingers
        assert torch.equal(comfy_model.model.diffusion_model.state_dict()[f"{key}.weight"], w0)


def test_stock_load_embed_reads_our_embedding(comfy, tmp_path):
    weights = {"input_blocks.1.1.transformer_blocks.0.attn2.to_k": torch.zeros(4, 768)}
    adapter = make_adapter(weights)
    files = fmt.write_comfy_files(adapter, tmp_path / "loras", tmp_path / "embeddings", "doll")
    assert files["prompt_words"] == {"<doll1>": "embedding:doll1"}
    loaded = comfy.sd1_clip.load_embed("doll1", str(tmp_path / "embeddings"), 768, "clip_l")
    assert torch.equal(loaded, adapter.token_embeddings["<doll1>"])

    tokenizer = comfy.sd1_clip.SDTokenizer(embedding_directory=str(tmp_path / "embeddings"))
    (row,) = tokenizer.tokenize_with_weights("photo of embedding:doll1 doll")
    vectors = [t for t, _w in row if isinstance(t, torch.Tensor)]
    assert len(vectors) == 1 and torch.equal(vectors[0], adapter.token_embeddings["<doll1>"][0])


def test_sdxl_style_embedding_has_one_tensor_per_encoder(comfy, tmp_path):
    emb = torch.randn(2, 768 + 1280)
    fmt.write_comfy_embedding(emb, tmp_path / "two.safetensors", {"clip_l": 768, "clip_g": 1280})
    clip_l = comfy.sd1_clip.load_embed("two", str(tmp_path), 768, "clip_l")
    clip_g = comfy.sd1_clip.load_embed("two", str(tmp_path), 1280, "clip_g")
    assert torch.equal(clip_l, emb[:, :768]) and torch.equal(clip_g, emb[:, 768:])
    with pytest.raises(ValueError, match="cannot be split"):
        fmt.write_comfy_embedding(emb, tmp_path / "bad.safetensors", {"clip_l": 768})


@pytest.mark.parametrize("name", ["../escape", "a/b", "/abs/path", "x\x00"])
def test_user_typed_adapter_names_cannot_leave_the_loras_folder(tmp_path, name):
    weights = {"input_blocks.1.1.transformer_blocks.0.attn2.to_k": torch.zeros(4, 768)}
    with pytest.raises(ValueError, match="adapter name"):
        fmt.write_comfy_files(make_adapter(weights), tmp_path / "loras", tmp_path / "emb", name)
    assert not list(tmp_path.rglob("*.safetensors"))
