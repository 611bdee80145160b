"""nodes/comfy_backend.py and nodes/tinyworld_models.py inside ComfyUI's own modules (in-process).

ComfyUI is imported from $COMFYUI_DIR / ~/ComfyUI (CPU), and the pack is imported as a
package the way ComfyUI imports it, so its relative imports resolve as they do in a server.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def tiny(pack):
    _, tinyworld_models = pack
    with torch.inference_mode():  # as every ComfyUI node runs
        return tinyworld_models.build_all(seed=0, use_weights=False)


def test_training_reaches_tokens_and_kv_through_comfy_modules_under_inference_mode(pack, tiny):
    comfy_backend, _ = pack
    from textloc_pack.textloc_core.attention.cross_attention import AttentionRouter, KVDeltaInjector

    model, clip, vae = tiny
    with torch.inference_mode(), comfy_backend.training_session(model, clip, vae) as bundle:
        token = torch.nn.Parameter(bundle.text.initial_embedding("star"))
        encoded = bundle.text.encode(["a <tw1> star on grass", "<tw1>, and a <tw1>"], {"<tw1>": token})
        assert encoded.token_positions == [{"<tw1>": [2]}, {"<tw1>": [1, 5]}]  # SOT, <tw1>, ",", and, a, <tw1>
        latents = bundle.denoiser.encode_images(torch.rand(2, 3, 64, 64))
        router = AttentionRouter(layers=None, token_slots=torch.tensor([[2], [1]]))
        with KVDeltaInjector(bundle.denoiser.unet) as deltas, bundle.denoiser.route_attention(router):
            out = bundle.denoiser.predict(latents, torch.tensor([10, 600]), encoded.context)
            loss = out.square().mean() + sum(m.probs.mean() for m in router.captured)
            loss.backward()
        assert len(router.captured) == 7  # every attn2 layer of the TinyWorld UNet was routed
        assert token.grad is not None and token.grad.abs().sum() > 0
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in deltas.parameters())
    assert bundle.denoiser.working_model.model_options["transformer_options"] == {}


def test_route_attention_keeps_another_packs_patch_and_restores_exactly(pack, tiny):
    comfy_backend, _ = pack
    from textloc_pack.textloc_core.attention.cross_attention import AttentionRouter

    model, clip, vae = tiny
    calls = []

    def other_pack(q, k, v, extra_options):  # e.g. an attention-scaling pack: output x 0
        calls.append(q.shape)
        return torch.zeros_like(q)

    patched = model.clone()
    patched.set_model_attn2_replace(other_pack, "input", 1, 0)
    denoiser = comfy_backend.ComfyDenoiserBackend(patched, vae)
    before = denoiser.working_model.model_options["transformer_options"]
    router = AttentionRouter(
        layers={"input_blocks.1.1.transformer_blocks.0.attn2", "middle_block.1.transformer_blocks.0.attn2"},
        token_slots=torch.tensor([[1]]),
        keep_grad=False,
    )
    x, t, ctx = torch.randn(1, 4, 16, 16), torch.tensor([500]), torch.randn(1, 77, 64)
    with torch.no_grad(), denoiser.route_attention(router):
        denoiser.predict(x, t, ctx)
    assert calls, "the other pack's replacement no longer ran"
    assert sorted(m.layer for m in router.captured) == sorted(router.layers)  # ours still captured both
    assert denoiser.working_model.model_options["transformer_options"] is before
    assert before["patches_replace"]["attn2"] == {("input", 1, 0): other_pack}


def test_identifier_tokens_are_placed_through_the_public_tokenizer(pack, tiny):
    comfy_backend, _ = pack
    from textloc_pack.nodes.comfy_tokens import IdentifierPlacer, identifier_pattern

    _, clip, _ = tiny
    with torch.inference_mode():
        placer = IdentifierPlacer.for_clip(clip)
        plain = clip.tokenize("a red star")["l"][0]
        assert placer.pieces("a red star")["l"] == [int(e[0]) for e in plain[1:4]]
        assert len(placer.pieces("<a10>")["l"]) > 1  # not in the vocabulary: the reason for placeholders
        a1, a10 = torch.full((1, 64), 1.0), torch.full((1, 64), 10.0)
        # "sks" is the first placeholder; a prompt holding it literally must still come out right
        tokens, where = placer.tokenize("sks a <a10> and (<a1>:1.2) embedding:<a1>", {"<a1>": a1, "<a10>": a10})
        entries = tokens["l"][0]
        assert where == {"<a10>": [3], "<a1>": [5, 6]}
        assert [float(entries[i][0][0]) for i in (3, 5, 6)] == [10.0, 1.0, 1.0]
        assert entries[5][1] == pytest.approx(1.2) and entries[6][1] == 1.0  # ComfyUI's own weight parsing
        assert not torch.is_tensor(entries[1][0])  # the literal "sks" stays a word
        assert [m.group(1) for m in identifier_pattern(["sks"]).finditer("sks asks sks2 (sks:1.2)")] == ["sks", "sks"]
    assert comfy_backend.attn2_patch_key("output_blocks.3.1.transformer_blocks.0.attn2") == ("output", 3, 0)
    assert comfy_backend.attn2_patch_key("diffusion_model.middle_block.1.transformer_blocks.1.attn2") == (
        "middle",
        0,
        1,
    )
    with pytest.raises(ValueError, match="path separator"):
        placer.check_new_token("../x")
    with pytest.raises(ValueError, match="already exists in the clip_l vocabulary"):
        placer.check_new_token("a")


def test_tinyworld_loader_reads_diffusers_weights_like_diffusers(pack, tmp_path):
    """Weights saved by diffusers/transformers (the shipped layout) load into ComfyUI's
    MODEL/CLIP/VAE with the same outputs."""
    _, tinyworld_models = pack
    from textloc_core.tinyworld import model_configs as mc

    torch.manual_seed(0)
    unet, vae, text = mc.build_unet().eval(), mc.build_vae().eval(), mc.build_text_encoder().eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # zero-initialised output convs would hide a bad mapping
    unet.save_pretrained(tmp_path / "unet")
    vae.save_pretrained(tmp_path / "vae")
    text.save_pretrained(tmp_path / "text_encoder")
    with torch.inference_mode():
        model = tinyworld_models.build_model(0, tmp_path)
        clip = tinyworld_models.build_clip(0, tmp_path)
        comfy_vae = tinyworld_models.build_vae(0, tmp_path)
        x, t, ctx = torch.randn(1, 4, 16, 16), torch.tensor([300.0]), torch.randn(1, 77, 64)
        torch.testing.assert_close(
            model.model.diffusion_model(x, timesteps=t, context=ctx),
            unet(x, t, encoder_hidden_states=ctx).sample,
            atol=1e-4,
            rtol=1e-4,
        )
        ids = clip.tokenizer.clip_l.tokenizer("a red star")["input_ids"]
        ids = torch.tensor([ids + [49407] * (77 - len(ids))])
        ours = clip.encode_from_tokens(clip.tokenize("a red star"))
        torch.testing.assert_close(ours, text(ids).last_hidden_state, atol=1e-4, rtol=1e-4)
        z = torch.randn(1, 4, 16, 16)
        decoded = comfy_vae.decode(z).movedim(-1, 1)
        expected = ((vae.decode(z).sample + 1) / 2).clamp(0, 1)
        torch.testing.assert_close(decoded, expected, atol=1e-3, rtol=1e-3)


def _adapter(model, token: str, fingerprint: str | None = None, scale: float = 0.05, seed: int = 0):
    """A hand-made adapter for ``model``: random K/V deltas and one token embedding."""
    from textloc_pack.nodes.comfy_backend import base_fingerprint_and_weights
    from textloc_pack.textloc_core.adapters.adapter import Adapter, AdapterMetadata, architecture_signature

    base, kv = base_fingerprint_and_weights(model)
    g = torch.Generator().manual_seed(seed)
    deltas = {k: torch.randn(w.shape, generator=g) * scale for k, w in kv.items()}
    meta = AdapterMetadata(
        base_fingerprint=fingerprint or base,
        architecture=architecture_signature(kv),
        concepts=[{"name": token.strip("<>"), "token": token, "class_word": "star", "init_word": ""}],
        guidance="hard",
    )
    return Adapter(deltas, {token: torch.randn(1, 64, generator=g)}, meta)


def test_apply_adapter_stacks_tokens_and_checks_the_base(pack, tiny):
    from textloc_pack.nodes.apply_node import apply_adapter
    from textloc_pack.nodes.comfy_backend import ComfyTextBackend
    from textloc_pack.nodes.comfy_tokens import IdentifierPlacer, IdentifierTokenizer, applied_identifiers

    model, clip, _ = tiny
    with torch.inference_mode():
        first, second = _adapter(model, "<a1>"), _adapter(model, "<b1>", seed=1)
        m1, c1 = apply_adapter(model, clip, first, 1.0)
        m2, c2 = apply_adapter(m1, c1, second, 0.5)
        tokens = c2.tokenize("a <a1> star and a <b1> star")  # stock CLIPTextEncode's call
        assert [i for i, e in enumerate(tokens["l"][0]) if torch.is_tensor(e[0])] == [2, 6]
        embeddings, adapters = applied_identifiers(c2)
        assert sorted(embeddings) == ["<a1>", "<b1>"] and adapters == [first, second]
        assert IdentifierPlacer.for_clip(c2).tokenize("a <a1> star and a <b1> star", embeddings)[1] == {
            "<a1>": [2],
            "<b1>": [6],
        }
        assert isinstance(c2.tokenizer, IdentifierTokenizer) and not isinstance(c2.tokenizer.inner, IdentifierTokenizer)
        base = clip.encode_from_tokens(clip.tokenize("a star and a star"))
        assert not torch.equal(c2.encode_from_tokens(tokens), base)
        assert len(m2.patches) == 2 * 7  # K and V of 7 attn2 layers, both adapters on each
        assert not isinstance(clip.tokenizer, IdentifierTokenizer) and applied_identifiers(c1)[0].keys() == {
            "<a1>"
        }  # inputs untouched
        # an adapter trained on other base weights is refused unless asked for
        foreign = _adapter(model, "<c1>", fingerprint="0123456789abcdef")
        with pytest.raises(ValueError, match="ignore base mismatch"):
            apply_adapter(model, clip, foreign, 1.0)
        apply_adapter(model, clip, foreign, 1.0, allow_base_mismatch=True)
        # a file whose token is an ordinary word would hijack it in every prompt: refused on load
        with pytest.raises(ValueError, match="adapter: token: 'a' already exists"):
            apply_adapter(model, clip, _adapter(model, "a"), 1.0)
        # one token, two different embeddings: refused
        clash = _adapter(model, "<a1>", seed=2)
        with pytest.raises(ValueError, match="<a1>"):
            apply_adapter(m1, c1, clash, 1.0)
    assert ComfyTextBackend(c2).embedding_dim == 64


def test_apply_node_reruns_when_its_adapter_file_is_rewritten(pack, tiny, tmp_path, monkeypatch):
    import folder_paths
    from textloc_pack.nodes.apply_node import ApplyAdapter
    from textloc_pack.textloc_core.adapters.adapter import save_adapter

    monkeypatch.setitem(folder_paths.folder_names_and_paths, "textloc", ([str(tmp_path)], {".safetensors"}))
    model = tiny[0]
    with torch.inference_mode():
        save_adapter(_adapter(model, "<a1>"), tmp_path / "x.safetensors")
        first = ApplyAdapter.fingerprint_inputs(adapter_file="x.safetensors", strength=1.0)
        save_adapter(_adapter(model, "<a1>", scale=0.2), tmp_path / "x.safetensors")
        assert ApplyAdapter.fingerprint_inputs(adapter_file="x.safetensors", strength=1.0) != first
        widget = next(i for i in ApplyAdapter.define_schema().inputs if i.id == "adapter_file")
        assert "x.safetensors" in widget.options


def test_training_leaves_the_input_model_and_clip_exactly_as_they_were(pack, tiny, tmp_path):
    comfy_backend, _ = pack
    from textloc_pack.nodes.tinyworld_nodes import TinyWorldConceptSet
    from textloc_pack.textloc_core.training import loop as trainer
    from textloc_pack.textloc_core.training.config import TrainConfig

    model, clip, vae = tiny
    x, t, ctx = torch.randn(1, 4, 16, 16), torch.tensor([400.0]), torch.randn(1, 77, 64)
    with torch.inference_mode():
        concepts = TinyWorldConceptSet.execute("dotstar", "<tw9>", 2, 0)[0]
        before_eps = model.model.diffusion_model(x, timesteps=t, context=ctx)
        before_ctx = clip.encode_from_tokens(clip.tokenize("a <tw9> star"))
        with comfy_backend.training_session(model, clip, vae) as bundle:
            config = TrainConfig(steps=2, learning_rate=1e-2, prior_images=0, lambda_prior=0.0, checkpoint_every=100)
            result = trainer.train(bundle, concepts, config, checkpoint_dir=tmp_path)
        assert result.steps_done == 2
        assert torch.equal(model.model.diffusion_model(x, timesteps=t, context=ctx), before_eps)
        assert torch.equal(clip.encode_from_tokens(clip.tokenize("a <tw9> star")), before_ctx)
        assert model.model_options == {"transformer_options": {}}
        assert not any(m._forward_hooks for m in model.model.diffusion_model.modules())
        assert not any("forward" in m.__dict__ for m in clip.cond_stage_model.modules())


def test_non_finite_widget_values_are_refused_naming_the_input(pack, tiny):
    from textloc_pack.nodes.apply_node import ApplyAdapter
    from textloc_pack.nodes.preview_node import AttentionPreview

    model, clip, vae = tiny
    with pytest.raises(ValueError, match="strength: nan is not a finite number"):
        ApplyAdapter.execute(model, clip, "tinyworld_pair.safetensors", float("nan"))
    with pytest.raises(ValueError, match="cfg: inf is not a finite number"):
        AttentionPreview.execute(  # ComfyUI passes every widget by name
            model,
            clip,
            vae,
            prompt="a star",
            negative="",
            tokens="star",
            seed=0,
            steps=1,
            cfg=float("inf"),
            sampler_name="euler",
            scheduler="normal",
            width=64,
            height=64,
            batch_size=1,
        )


def test_multi_piece_class_words_start_from_the_mean_of_their_pieces(pack, tiny):
    """Issue 14: "cat figurine" (the paper's cat_figurine) starts from the mean of its pieces'
    rows in each text encoder table, the core's one rule; an empty word blames the input."""
    comfy_backend, _ = pack
    model, clip, vae = tiny
    with torch.inference_mode(), comfy_backend.training_session(model, clip, vae) as bundle:
        text = bundle.text
        start = text.initial_embedding("cat figurine", what="concept 'cat_figurine' class_word")
        assert start.shape == (1, text.embedding_dim) and torch.isfinite(start).all()
        parts = []
        for key, pieces in text.placer.pieces("cat figurine").items():
            assert len(pieces) >= 2, pieces
            parts.append(torch.stack([text.tables[key][p].float().cpu() for p in pieces]).mean(0))
        assert torch.allclose(start, torch.cat(parts)[None])
        with pytest.raises(ValueError, match=r"^concept 'x' class_word: ' ' has no vocabulary pieces"):
            text.initial_embedding(" ", what="concept 'x' class_word")


def test_concept_folder_cancel_stops_its_reader_and_ends_the_prompt(pack, tmp_path, monkeypatch):
    """Cancel while Concept Folder reads: the core's reader polls ``stop_requested`` before each
    photo and stops with the core's ``Cancelled``; comfy_cancel ends the prompt as ComfyUI's
    interrupt, with the flag cleared so the next prompt runs."""
    import comfy.model_management as mm
    import numpy as np
    from PIL import Image
    from textloc_pack.nodes.concept_nodes import ConceptFolder
    from textloc_pack.nodes.read_access import READ_ROOTS_ENV

    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    (root / "masks" / "thing").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(root / "images" / f"{i}.png")
        mask = np.zeros((16, 16), np.uint8)
        mask[:8, :8] = 255
        Image.fromarray(mask).save(root / "masks" / "thing" / f"{i}.png")
    monkeypatch.setenv(READ_ROOTS_ENV, str(tmp_path))
    concept_set, _preview = ConceptFolder.execute(str(root), 16).result
    assert len(concept_set.images) == 3
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            ConceptFolder.execute(str(root), 16)
        assert not mm.processing_interrupted()
    finally:
        mm.interrupt_current_processing(False)
