"""SDXL-architecture models in the diffusers backend (tiny, random, built in code).

Two text encoders (CLIP-L-like and bigG-like, penultimate layer, concatenated), bigG's pooled
vector and the size conditioning into a ``text_time`` UNet; training with every guidance,
the map levels SDXL's two attention resolutions leave, sampling with maps, the adapter file
and diffusers' Custom Diffusion / textual-inversion loaders.
"""

from __future__ import annotations

import copy

import pytest
import torch

from benchmarks.tiny_models import TINY_SDXL_TRAINING
from textloc_core.adapters import formats as fmt
from textloc_core.adapters.adapter import load_adapter, save_adapter
from textloc_core.attention.cross_attention import find_cross_attention
from textloc_core.attention.maps import attn2_query_counts, choose_layers
from textloc_core.backends.unet_names import diffusers_to_ldm_attn2
from textloc_core.sampling.generation import generate
from textloc_core.training.config import TrainConfig
from textloc_core.training.loop import train
from textloc_core.training.result import make_adapter

WIDTH_L, WIDTH_G = 32, 48


@pytest.fixture
def pair(doll_bucket_set):
    """Two 32-pixel photos, each naming the doll and the bucket (12-pixel squares)."""
    return doll_bucket_set(
        [{"doll": (2, 2), "bucket": (16, 16)}, {"doll": (16, 4), "bucket": (3, 18)}], side=32, size=12, seed=5
    )


def test_two_encoders_concatenate_and_each_gets_its_slice(tiny_sdxl_bundle):
    text = tiny_sdxl_bundle.text
    assert text.embedding_dim == WIDTH_L + WIDTH_G
    assert text.encoder_sizes == [("clip_l", WIDTH_L), ("clip_g", WIDTH_G)]
    token = text.initial_embedding("doll").requires_grad_()
    encoded = text.encode(["a photo of a <d1> doll", "a chair"], {"<d1>": token})
    assert encoded.context.shape == (2, 77, WIDTH_L + WIDTH_G) and encoded.pooled.shape == (2, WIDTH_G)
    assert encoded.token_positions == [{"<d1>": [5]}, {}]  # SOT a photo of a <d1>
    (encoded.context[0].square().sum() + encoded.pooled[0].square().sum()).backward()
    assert token.grad[0, :WIDTH_L].abs().sum() > 0 and token.grad[0, WIDTH_L:].abs().sum() > 0


def test_the_init_words_own_vectors_reproduce_the_plain_prompt_in_both_encoders(tiny_sdxl_bundle):
    """Each slice goes to its own encoder: swapping them would change context and pooled."""
    text = tiny_sdxl_bundle.text
    injected = text.encode(["photo of a <d1>"], {"<d1>": text.initial_embedding("doll")})
    plain = text.encode(["photo of a doll"], {})
    torch.testing.assert_close(injected.context, plain.context, atol=1e-6, rtol=0)
    torch.testing.assert_close(injected.pooled, plain.pooled, atol=1e-6, rtol=0)
    # a vector of the wrong width (an SD1.x adapter) is named, not broadcast
    with pytest.raises(ValueError, match="another model family"):
        text.encode(["a <d1>"], {"<d1>": torch.zeros(1, WIDTH_L)})


def test_a_new_token_is_added_to_both_tokenizers_and_known_words_are_refused(tiny_sdxl_bundle):
    text = tiny_sdxl_bundle.text
    text.check_token("<z1>")
    assert all("<z1>" in e.tokenizer.get_vocab() for e in text.encoders)
    with pytest.raises(ValueError, match="already a word"):
        text.check_token("doll")


def test_size_conditioning_and_pooled_reach_the_unet(tiny_sdxl_bundle):
    denoiser = tiny_sdxl_bundle.denoiser
    latents = torch.randn(2, 4, 16, 12)
    assert denoiser.needs_pooled
    assert denoiser.size_conditioning(latents).tolist() == [[32, 24, 0, 0, 32, 24]] * 2  # pixels = latent x 2
    encoded = tiny_sdxl_bundle.text.encode(["a doll", "a bucket"], {})
    t = torch.tensor([300, 300])
    with torch.no_grad():
        out = denoiser.predict(latents, t, encoded.context, encoded.pooled)
        other = denoiser.predict(latents, t, encoded.context, encoded.pooled.flip(0))
    assert out.shape == latents.shape and (out - other).abs().max() > 1e-4
    with pytest.raises(ValueError, match="pooled"):
        denoiser.predict(latents, t, encoded.context)


def test_map_levels_keep_both_of_sdxls_two_attention_resolutions(tiny_sdxl_bundle):
    """The paper drops the finest of SD1.5's four grids; SDXL has two, and both are kept."""
    encoded = tiny_sdxl_bundle.text.encode(["a doll"], {})
    counts = attn2_query_counts(tiny_sdxl_bundle.denoiser, torch.randn(1, 4, 16, 16), encoded, torch.float32)
    assert sorted(set(counts.values())) == [16, 64]  # two levels, like SDXL's 32 and 64 grids at 1024 px
    assert choose_layers(counts, "all_but_finest") == choose_layers(counts, "all") == set(counts)
    assert choose_layers(counts, (2,)) == {layer for layer, n in counts.items() if n == 16}
    # a model with four resolutions (SD1.5's pattern) still drops the finest
    four = {"a": 4096, "b": 1024, "c": 256, "d": 64}
    assert choose_layers(four, "all_but_finest") == {"b", "c", "d"}


@pytest.mark.parametrize("method", ["hard", "soft", "none"])
def test_every_guidance_trains_sdxl_with_prior_and_leaves_the_base_unchanged(
    tiny_sdxl_bundle, pair, method, tmp_path, monkeypatch
):
    from textloc_core.training import prior

    monkeypatch.setattr(prior, "_MEMORY", {})  # the prior images come from the file cache, not this process's
    bundle = tiny_sdxl_bundle
    before = {k: v.clone() for k, v in bundle.denoiser.unet.state_dict().items()}
    config = TrainConfig(guidance=method, **TINY_SDXL_TRAINING)
    result = train(bundle, pair, config, prior_cache_dir=tmp_path / "prior")
    assert result.steps_done == 2
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in result.history)
    assert (result.history[0]["attention"] > 0) == (method != "none") and result.history[0]["prior"] > 0
    assert len(list((tmp_path / "prior").iterdir())) == 2  # one cached prior set per class word
    # K/V deltas on every attn2 (context 80 wide), both slices of each token moved
    names = {diffusers_to_ldm_attn2(n, bundle.denoiser.unet.config) for n in find_cross_attention(bundle.denoiser.unet)}
    assert {k.rsplit(".", 1)[0] for k in result.kv_deltas} == names and len(names) == 11
    assert all(d.shape[1] == WIDTH_L + WIDTH_G and d.abs().sum() > 0 for d in result.kv_deltas.values())
    start = bundle.text.initial_embedding("doll")
    moved = (result.token_embeddings["<doll1>"] - start).abs()
    assert moved[0, :WIDTH_L].sum() > 0 and moved[0, WIDTH_L:].sum() > 0
    after = bundle.denoiser.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_an_sdxl_adapter_round_trips_and_generates_with_maps(tiny_sdxl_bundle, pair, tmp_path):
    bundle = tiny_sdxl_bundle
    result = train(bundle, pair, TrainConfig(guidance="hard", steps=1, learning_rate=1e-3, prior_images=0))
    adapter = make_adapter(result, pair, bundle)
    back = load_adapter(save_adapter(adapter, tmp_path / "a.safetensors"))
    assert back.token_embeddings["<doll1>"].shape == (1, WIDTH_L + WIDTH_G)
    out = generate(bundle, "a <doll1> doll", adapters=[back], steps=2, size=(32, 32), maps_for=["<doll1>"])
    assert out.images.shape == (1, 3, 32, 32) and out.token_maps["<doll1>"].shape == (1, 8, 8)
    assert torch.isfinite(out.images).all() and out.token_maps["<doll1>"].max() > 0


def _sdxl_pipeline(parts):
    from diffusers import DDPMScheduler, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(scheduler=DDPMScheduler(), **parts)


def test_custom_diffusion_export_loads_in_diffusers_sdxl(pair, tmp_path, tiny_sdxl_parts_builder):
    parts = tiny_sdxl_parts_builder()
    from textloc_core.backends.diffusers_backend import bundle_from_diffusers

    bundle = bundle_from_diffusers(**parts)
    result = train(bundle, pair, TrainConfig(guidance="soft", steps=1, learning_rate=1e-2, prior_images=0))
    adapter = make_adapter(result, pair, bundle)
    unet = bundle.denoiser.unet
    modules = {
        f"{diffusers_to_ldm_attn2(name, unet.config)}.{proj}": getattr(attn, proj)
        for name, attn in find_cross_attention(unet).items()
        for proj in ("to_k", "to_v")
    }
    base = {k: m.weight.detach().clone() for k, m in modules.items()}
    files = fmt.write_custom_diffusion(
        adapter, tmp_path, base, unet.config, encoder_dims=dict(bundle.text.encoder_sizes)
    )

    # the UNet: diffusers' own loader gives what W0 + delta gives
    reference = copy.deepcopy(unet)
    ref_modules = {
        f"{diffusers_to_ldm_attn2(name, reference.config)}.{proj}": getattr(attn, proj)
        for name, attn in find_cross_attention(reference).items()
        for proj in ("to_k", "to_v")
    }
    with torch.no_grad():
        for key, delta in adapter.kv_deltas.items():
            ref_modules[key].weight += delta
    loaded = copy.deepcopy(unet)
    pipe = _sdxl_pipeline(dict(tiny_sdxl_parts_builder(), unet=loaded))  # fresh tokenizers: training added <doll1>
    loaded.load_attn_procs(str(tmp_path), weight_name=fmt.CUSTOM_DIFFUSION_WEIGHTS, _pipeline=pipe)
    encoded = bundle.text.encode(["a doll"], {})
    x, t = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([400])
    added = {"text_embeds": encoded.pooled, "time_ids": bundle.denoiser.size_conditioning(x)}
    with torch.no_grad():
        expected = reference(x, t, encoder_hidden_states=encoded.context, added_cond_kwargs=added).sample
        got = loaded(x, t, encoder_hidden_states=encoded.context, added_cond_kwargs=added).sample
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)

    # the token: one file, clip_l and clip_g slices, as diffusers' SDXL textual-inversion docs load it
    from safetensors.torch import load_file

    state = load_file(str(files["embeddings"]["<doll1>"]))
    assert set(state) == {"clip_l", "clip_g"}
    pipe.load_textual_inversion(
        state["clip_l"], token="<doll1>", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer
    )
    pipe.load_textual_inversion(
        state["clip_g"], token="<doll1>", text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2
    )
    rows = [
        enc.get_input_embeddings().weight[tok.convert_tokens_to_ids("<doll1>")]
        for enc, tok in ((pipe.text_encoder, pipe.tokenizer), (pipe.text_encoder_2, pipe.tokenizer_2))
    ]
    torch.testing.assert_close(torch.cat(rows), adapter.token_embeddings["<doll1>"][0])

    back = fmt.read_custom_diffusion(tmp_path, base, unet.config)
    assert back.metadata == adapter.metadata
    torch.testing.assert_close(back.token_embeddings["<doll1>"], adapter.token_embeddings["<doll1>"])


def test_load_model_reads_a_local_sdxl_pipeline_folder(tmp_path, tiny_sdxl_parts_builder):
    from textloc_core.backends.diffusers_backend import load_model

    parts = tiny_sdxl_parts_builder()
    _sdxl_pipeline(parts).save_pretrained(str(tmp_path / "xl"))
    bundle = load_model(tmp_path / "xl")
    assert bundle.denoiser.needs_pooled and bundle.text.embedding_dim == WIDTH_L + WIDTH_G
    encoded = bundle.text.encode(["a doll"], {})
    with torch.no_grad():
        out = bundle.denoiser.predict(torch.zeros(1, 4, 16, 16), torch.tensor([10]), encoded.context, encoded.pooled)
    assert out.shape == (1, 4, 16, 16) and torch.isfinite(out).all()


def test_sdxl_trains_with_the_memory_options(tiny_sdxl_bundle, pair):
    """bf16 autocast (the CPU path of what "auto" picks on a GPU) with gradient checkpointing."""
    config = TrainConfig(
        guidance="hard",
        steps=2,
        learning_rate=1e-3,
        prior_images=0,
        mixed_precision="bf16",
        gradient_checkpointing=True,
    )
    result = train(tiny_sdxl_bundle, pair, config)
    assert result.steps_done == 2 and all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in result.history)
    assert all(d.dtype == torch.float32 and d.abs().sum() > 0 for d in result.kv_deltas.values())
    assert not tiny_sdxl_bundle.denoiser.unet.is_gradient_checkpointing  # switched off again
