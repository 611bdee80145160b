"""Custom Diffusion files: diffusers' own loaders accept ours, and we read diffusers' own.

Uses the TinyWorld-shaped diffusers UNet (random weights) and real diffusers loaders:
``UNet2DConditionModel.load_attn_procs`` / ``save_attn_procs`` and
``StableDiffusionPipeline.load_textual_inversion``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from textloc_core.adapters import adapter as ad
from textloc_core.adapters import formats as fmt
from textloc_core.attention.cross_attention import find_cross_attention
from textloc_core.backends.unet_names import diffusers_to_ldm_attn2
from textloc_core.tinyworld import model_configs as mc

TOKENIZER_DIR = Path(mc.__file__).parent / "weights" / "tokenizer"


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return mc.build_unet().eval()


def make_pipeline(unet):
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    return StableDiffusionPipeline(
        vae=mc.build_vae(),
        text_encoder=mc.build_text_encoder(),
        tokenizer=CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR)),
        unet=unet,
        scheduler=DDPMScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def canonical_modules(unet):
    return {
        f"{diffusers_to_ldm_attn2(name, unet.config)}.{proj}": getattr(attn, proj)
        for name, attn in find_cross_attention(unet).items()
        for proj in ("to_k", "to_v")
    }


def make_adapter(unet, seed=3):
    base = {k: m.weight.detach().clone() for k, m in canonical_modules(unet).items()}
    gen = torch.Generator().manual_seed(seed)
    deltas = {k: 0.2 * torch.randn(w.shape, generator=gen) for k, w in base.items()}
    meta = ad.AdapterMetadata(
        base_fingerprint="tiny",
        architecture=ad.architecture_signature(base),
        concepts=[{"name": "doll", "token": "<doll1>", "class_word": "doll", "init_word": None}],
        guidance="soft",
        steps=3,
    )
    return base, ad.Adapter(deltas, {"<doll1>": torch.randn(1, mc.TEXT_HIDDEN, generator=gen)}, meta)


def unet_out(unet, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, mc.LATENT_CHANNELS, mc.LATENT_SIZE, mc.LATENT_SIZE, generator=gen)
    ctx = torch.randn(1, 77, mc.TEXT_HIDDEN, generator=gen)
    with torch.no_grad():
        return unet(x, torch.tensor([500]), encoder_hidden_states=ctx).sample


def test_stock_load_attn_procs_reproduces_our_patched_unet(unet, tmp_path):
    base, adapter = make_adapter(unet)
    fmt.write_custom_diffusion(adapter, tmp_path, base, unet.config)

    reference = copy.deepcopy(unet)  # W0 + delta written into a copy's weights
    modules = canonical_modules(reference)
    with torch.no_grad():
        for key, delta in adapter.kv_deltas.items():
            modules[key].weight += delta.to(modules[key].weight)
    expected = unet_out(reference)
    plain = unet_out(unet)

    loaded = copy.deepcopy(unet)
    # diffusers 0.42 installs the processors only when told the pipeline (as its docs' example
    # does through pipeline.unet); without _pipeline the call parses the file and drops it.
    loaded.load_attn_procs(str(tmp_path), weight_name=fmt.CUSTOM_DIFFUSION_WEIGHTS, _pipeline=make_pipeline(loaded))
    assert type(loaded.attn_processors[next(iter(loaded.attn_processors))]).__name__ == "CustomDiffusionAttnProcessor"
    got = unet_out(loaded)
    assert (expected - plain).abs().max() > 1e-2  # the adapter really changes the output
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_stock_load_textual_inversion_takes_our_embedding(unet, tmp_path):
    base, adapter = make_adapter(unet)
    files = fmt.write_custom_diffusion(adapter, tmp_path, base, unet.config)
    assert files["embeddings"]["<doll1>"].name == "doll1.safetensors"
    pipe = make_pipeline(unet)
    pipe.load_textual_inversion(str(tmp_path), weight_name="doll1.safetensors")
    token_id = pipe.tokenizer.convert_tokens_to_ids("<doll1>")
    row = pipe.text_encoder.get_input_embeddings().weight[token_id]
    torch.testing.assert_close(row, adapter.token_embeddings["<doll1>"][0])


def test_our_files_read_back_to_the_same_adapter(unet, tmp_path):
    base, adapter = make_adapter(unet)
    fmt.write_custom_diffusion(adapter, tmp_path, base, unet.config)
    back = fmt.read_custom_diffusion(tmp_path, base, unet.config)
    assert back.metadata == adapter.metadata
    for key, delta in adapter.kv_deltas.items():
        torch.testing.assert_close(back.kv_deltas[key], delta, atol=1e-6, rtol=0)
    assert torch.equal(back.token_embeddings["<doll1>"], adapter.token_embeddings["<doll1>"])


@pytest.mark.parametrize("safe", [True, False])
def test_files_written_by_diffusers_itself_are_read(unet, tmp_path, safe):
    from diffusers.models.attention_processor import CustomDiffusionAttnProcessor

    base, adapter = make_adapter(unet)
    trained = copy.deepcopy(unet)
    attn2 = {f"{name}.processor": name for name in find_cross_attention(trained)}
    processors = {}
    for name, old in trained.attn_processors.items():
        if name in attn2:
            layer = diffusers_to_ldm_attn2(attn2[name], trained.config)
            k = base[f"{layer}.to_k"] + adapter.kv_deltas[f"{layer}.to_k"]
            v = base[f"{layer}.to_v"] + adapter.kv_deltas[f"{layer}.to_v"]
            proc = CustomDiffusionAttnProcessor(
                train_kv=True, train_q_out=False, hidden_size=k.shape[0], cross_attention_dim=k.shape[1]
            )
            proc.to_k_custom_diffusion.weight.data.copy_(k)
            proc.to_v_custom_diffusion.weight.data.copy_(v)
        else:
            proc = CustomDiffusionAttnProcessor(
                train_kv=False, train_q_out=False, hidden_size=None, cross_attention_dim=None
            )
        processors[name] = proc
    trained.set_attn_processor(processors)
    trained.save_attn_procs(str(tmp_path), safe_serialization=safe)
    torch.save({"<doll1>": adapter.token_embeddings["<doll1>"][0]}, tmp_path / "<doll1>.bin")

    back = fmt.read_custom_diffusion(
        tmp_path, base, unet.config, base_fingerprint="tiny", class_words={"<doll1>": "doll"}
    )
    assert back.metadata.guidance == "none" and back.metadata.class_words == ["doll"]
    for key, delta in adapter.kv_deltas.items():
        torch.testing.assert_close(back.kv_deltas[key], delta, atol=1e-6, rtol=0)
    torch.testing.assert_close(back.token_embeddings["<doll1>"], adapter.token_embeddings["<doll1>"])


def test_a_foreign_architecture_is_named(unet, tmp_path):
    base, adapter = make_adapter(unet)
    fmt.write_custom_diffusion(adapter, tmp_path, base, unet.config)
    smaller = {k: v[:, :8] for k, v in base.items()}
    with pytest.raises(ValueError, match="trained for another architecture"):
        fmt.read_custom_diffusion(tmp_path, smaller, unet.config)
