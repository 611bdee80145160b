"""TextLoc Apply Adapter restores a whole Flux / SD3.5 adapter on ComfyUI's own MODEL + CLIP
(tiny models of ``tiny_dit_comfy``): the K/V deltas on the fused text ``qkv``, the token's CLIP
slices as input embeddings, and its T5 slice, a vector in T5's output space, written into the
context row at the token's T5 position while every other row is what T5 gives with its pad id
there (as both backends train it). The original CLIP is left as it was; adapters stack.
"""

from __future__ import annotations

import pytest
import tiny_dit_comfy as tiny
import torch

PROMPT = "a photo of a {} doll"
WIDTHS = {"flux": (tiny.FLUX_T5, tiny.WIDTH_L), "sd3": (tiny.SD3_T5, tiny.WIDTH_L + tiny.WIDTH_G)}
"""(T5 width, CLIP widths together) of a token's vector."""


def _adapter(model, family: str, token: str, seed: int):
    from textloc_core.adapters import adapter as ad
    from textloc_core.adapters.formats import text_kv_from_fused
    from textloc_core.backends.fingerprint import base_model_fingerprint

    base = text_kv_from_fused(model.model.diffusion_model.state_dict())
    gen = torch.Generator().manual_seed(seed)
    meta = ad.AdapterMetadata(
        base_fingerprint=base_model_fingerprint(base),
        architecture=ad.architecture_signature(base),
        concepts=[{"name": token.strip("<>"), "token": token, "class_word": "doll", "init_word": None}],
        guidance="hard",
    )
    deltas = {key: 0.05 * torch.randn(w.shape, generator=gen) for key, w in base.items()}
    return ad.Adapter(deltas, {token: torch.randn(1, sum(WIDTHS[family]), generator=gen)}, meta)


def _t5_part(family: str, vector: torch.Tensor) -> torch.Tensor:
    t5, _ = WIDTHS[family]
    return vector[0, :t5] if family == "flux" else vector[0, -t5:]


def _encode(clip, text: str):
    tokens = clip.tokenize(text)
    with torch.inference_mode():
        context, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return tokens, context.float(), pooled.float()


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_apply_restores_the_whole_token_t5_part_included(pack, family):
    from textloc_pack.nodes.apply_node import apply_adapter
    from textloc_pack.nodes.comfy_dit_apply import t5_rows

    with torch.inference_mode():
        model, clip = tiny.build_model(family, seed=1), tiny.build_clip(family, seed=1)
    doll = _adapter(model, family, "<doll1>", seed=3)
    new_model, new_clip = apply_adapter(model, clip, doll, 1.0)
    assert len(new_model.patches) == len(doll.kv_deltas) // 2  # one fused qkv patch per block

    tokens, context, pooled = _encode(new_clip, PROMPT.format("<doll1>"))
    ((position, _),) = t5_rows(tokens)
    # the reference: the original CLIP with T5's pad token written at the identifier's place
    plain_tokens, plain, plain_pooled = _encode(clip, PROMPT.format("<pad>"))
    n_t5 = sum(len(chunk) for chunk in tokens["t5xxl"])
    assert n_t5 == sum(len(chunk) for chunk in plain_tokens["t5xxl"]) and context.shape == plain.shape
    start = context.shape[1] - n_t5
    want = plain.clone()
    want[0, start + position] = _t5_part(family, doll.token_embeddings["<doll1>"]).to(want.dtype)
    torch.testing.assert_close(context[:, start:], want[:, start:], rtol=1e-5, atol=1e-5)
    assert not torch.equal(pooled, plain_pooled)  # the CLIP-L slice reaches the pooled vector

    # the original CLIP is untouched, and a second adapter stacks its token on top
    _, again, _ = _encode(clip, PROMPT.format("<pad>"))
    assert torch.equal(again, plain)
    bucket = _adapter(model, family, "<bucket1>", seed=4)
    _, stacked = apply_adapter(new_model, new_clip, bucket, 1.0)
    both, _, _ = _encode(stacked, "a <doll1> doll and a <bucket1> bucket")
    vectors = [v for _, v in t5_rows(both)]
    assert len(vectors) == 2
    assert torch.equal(vectors[0], _t5_part(family, doll.token_embeddings["<doll1>"]))
    assert torch.equal(vectors[1], _t5_part(family, bucket.token_embeddings["<bucket1>"]))


def test_a_token_of_another_width_is_named(pack):
    from textloc_pack.nodes.apply_node import apply_adapter

    with torch.inference_mode():
        model, clip = tiny.build_model("flux", seed=1), tiny.build_clip("flux", seed=1)
    adapter = _adapter(model, "flux", "<doll1>", seed=3)
    adapter.token_embeddings["<doll1>"] = torch.randn(1, tiny.WIDTH_L + 7)
    _, new_clip = apply_adapter(model, clip, adapter, 1.0)
    with pytest.raises(ValueError, match="T5 part is 7 values wide, this text encoder's T5 gives 32"):
        _encode(new_clip, PROMPT.format("<doll1>"))


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_attention_preview_maps_the_applied_token(pack, family):
    """Attention Preview on an applied adapter's token: it is tracked at its T5 position (and,
    SD3, at its CLIP position, where the CLIP lists hold its slices), and ComfyUI's sampler
    gives one finite, normalised map of it beside a word's."""
    from textloc_pack.nodes import preview_node
    from textloc_pack.nodes.apply_node import apply_adapter
    from textloc_pack.nodes.comfy_dit_apply import t5_rows
    from textloc_pack.nodes.comfy_dit_preview import dit_mapped_tokens

    with torch.inference_mode():
        model, clip, vae = tiny.build_all(family, seed=1)
    doll = _adapter(model, family, "<doll1>", seed=3)
    new_model, new_clip = apply_adapter(model, clip, doll, 1.0)
    prompt = PROMPT.format("<doll1>") + " on a table"
    with torch.inference_mode():
        tokens, wanted, layout, _ = dit_mapped_tokens(new_model, new_clip, vae, prompt, "", "", 1.0, 1)
        _, context, _ = _encode(new_clip, prompt)
    assert wanted == ["<doll1>"]  # no tokens named: every adapter token in the prompt
    ((t5_position, _),) = t5_rows(tokens)
    n_t5 = sum(len(chunk) for chunk in tokens["t5xxl"])
    want = [context.shape[1] - n_t5 + t5_position]
    if family == "sd3":
        clip_at = [i for i, entry in enumerate(tokens["l"][0]) if torch.is_tensor(entry[0])]
        assert len(clip_at) == 1 and all(torch.is_tensor(tokens["g"][0][i][0]) for i in clip_at)
        want = clip_at + want
    assert layout.slots[0].tolist() == want and layout.present.all()

    settings = dict(negative="", seed=0, steps=2, cfg=1.0, sampler_name="euler", scheduler="simple")
    settings.update(prompt=prompt, tokens="<doll1>, table", width=64, height=48, batch_size=1)
    with torch.inference_mode():
        images, overlays, masks, mapped = preview_node.attention_preview(
            new_model, new_clip, vae, preview_node.PreviewSettings(**settings)
        )
    assert mapped == "<doll1>, table" and images.shape == (1, 48, 64, 3) and overlays.shape == (2, 48, 64, 3)
    assert masks.shape == (2, 48, 64) and torch.isfinite(masks).all()
    assert all(float(m.max()) == 1.0 and float(m.min()) == 0.0 for m in masks)
    assert not torch.equal(masks[0], masks[1])  # the token's map is its own, not the word's
