"""Our ComfyUI files load through ComfyUI's own, unmodified loaders.

* UNet patch file -> ``comfy.utils.load_torch_file`` + ``comfy.sd.load_lora_for_models`` (exactly
  what stock LoraLoaderModelOnly runs) on a real ComfyUI SD1-type model with TinyWorld's
  shape; patched weights must equal ``W0 + strength * delta`` and every key must load.
* Embedding file -> ``comfy.sd1_clip.load_embed`` and the stock SD1 tokenizer's
  ``embedding:NAME`` handling (what CLIPTextEncode runs), under the name Train reports
  (``nodes/paths.embedding_name``, the pack's one naming scheme).

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
from comfy_server import import_pack

from textloc_core.adapters import adapter as ad
from textloc_core.adapters import formats as fmt
from textloc_core.tinyworld import model_configs as mc

COMFY = Path(os.environ.get("COMFYUI_DIR", Path.home() / "ComfyUI"))


@pytest.fixture(scope="module")
def comfy(not_run):
    if not (COMFY / "comfy" / "lora.py").is_file():
        not_run(
            "ComfyUI adapter-format tests", f"no ComfyUI tree at {COMFY}; set COMFYUI_DIR", "TEXTLOC_REQUIRE_COMFYUI"
        )
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
def paths(comfy):
    """nodes/paths.py (where Train writes and what it tells the user to type), imported the way
    ComfyUI imports the pack: as a package, so its relative imports resolve."""
    import_pack()
    from textloc_pack.nodes import paths

    return paths


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
        guidance="hard",
    )
    deltas = {k: torch.randn(w.shape, generator=gen) for k, w in weights.items()}
    return ad.Adapter(deltas, {"<doll1>": torch.randn(1, 768, generator=gen)}, meta)


def test_stock_lora_loader_applies_the_unet_patch(comfy, comfy_model, tmp_path, caplog):
    weights = base_kv(comfy_model)
    assert len(weights) >= 8, "the tiny ComfyUI model should have several attn2 layers"
    adapter = make_adapter(weights)
    patch = fmt.write_comfy_unet_patch(adapter, tmp_path / "loras" / "doll.safetensors")

    lora = comfy.utils.load_torch_file(str(patch), safe_load=True)
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


def test_stock_load_embed_reads_our_embedding_by_the_name_train_reports(comfy, paths, tmp_path):
    """Train writes each token to ``<embeddings>/<paths.embedding_name>.safetensors`` and tells the
    user to write ``embedding:<paths.embedding_name>``: stock ComfyUI must find it by that name."""
    emb = torch.randn(1, 768)
    name = paths.embedding_name("doll_adapter", "doll")
    assert "doll_adapter" in name and "doll" in name.replace("doll_adapter", "")
    fmt.write_comfy_embedding(emb, tmp_path / f"{name}.safetensors")
    loaded = comfy.sd1_clip.load_embed(name, str(tmp_path), 768, "clip_l")
    assert torch.equal(loaded, emb)

    tokenizer = comfy.sd1_clip.SDTokenizer(embedding_directory=str(tmp_path))
    (row,) = tokenizer.tokenize_with_weights(f"photo of embedding:{name} doll")
    vectors = [t for t, _w in row if isinstance(t, torch.Tensor)]
    assert len(vectors) == 1 and torch.equal(vectors[0], emb[0])
    # two adapters with the same concept name never share a file
    assert paths.embedding_name("other", "doll") != name


def test_sdxl_style_embedding_has_one_tensor_per_encoder(comfy, tmp_path):
    emb = torch.randn(2, 768 + 1280)
    fmt.write_comfy_embedding(emb, tmp_path / "two.safetensors", {"clip_l": 768, "clip_g": 1280})
    clip_l = comfy.sd1_clip.load_embed("two", str(tmp_path), 768, "clip_l")
    clip_g = comfy.sd1_clip.load_embed("two", str(tmp_path), 1280, "clip_g")
    assert torch.equal(clip_l, emb[:, :768]) and torch.equal(clip_g, emb[:, 768:])
    with pytest.raises(ValueError, match="cannot be split"):
        fmt.write_comfy_embedding(emb, tmp_path / "bad.safetensors", {"clip_l": 768})


@pytest.mark.parametrize("name", ["../escape", "a/b", "/abs/path", "x\x00"])
def test_user_typed_adapter_names_cannot_leave_their_folders(paths, name):
    with pytest.raises(ValueError, match="adapter name"):
        paths.embedding_name(name, "doll")
    with pytest.raises(ValueError, match="adapter name"):
        paths.lora_path(name)
