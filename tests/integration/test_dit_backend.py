"""Flux.1- and SD3.5-architecture models through nodes/comfy_dit_backend.py, in-process in a real
ComfyUI (tiny random models built as ComfyUI builds those families: ``tiny_dit_comfy``).

Token positions in each text part, the captured map against a direct softmax over the same
logits inside a ComfyUI block, gradients that reach only the text-stream K/V rows and the
tokens, the objective read off the model's own ``model_sampling``, every guidance with prior,
bit-identical resume, gradient checkpointing, and an fp8 base.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import pytest
import tiny_dit_comfy as tiny
import torch

FAMILIES = tiny.FAMILIES
KV_KEYS = {
    "flux": [f"double_blocks.{i}.txt_attn.{p}" for i in range(tiny.FLUX_DOUBLE_BLOCKS) for p in ("to_k", "to_v")],
    "sd3": [f"joint_blocks.{i}.context_block.attn.{p}" for i in range(tiny.SD3_JOINT_BLOCKS) for p in ("to_k", "to_v")],
}


@pytest.fixture(scope="module")
def models(pack):
    with torch.inference_mode():  # as every ComfyUI node runs
        return {family: tiny.build_all(family) for family in FAMILIES}


@contextmanager
def _session(pack, models, family):
    """A training session (ModelBundle) over the tiny ``family`` model, entered as a node would."""
    comfy_backend, _ = pack
    with torch.inference_mode(), comfy_backend.training_session(*models[family]) as bundle:
        yield bundle


def _square(top, left, size=24, side=64):
    mask = torch.zeros(side, side)
    mask[top : top + size, left : left + size] = 1
    return mask


def _concepts():
    from textloc_pack.textloc_core.data.concepts import Concept, ConceptImage, ConceptSet

    torch.manual_seed(1)
    return ConceptSet(
        [Concept("star", "<star1>", "star")],
        [
            ConceptImage(torch.rand(3, 64, 64), {"star": _square(4, 4)}),
            ConceptImage(torch.rand(3, 64, 64), {"star": _square(30, 20)}),
        ],
    )


def _config(**overrides):
    from textloc_pack.textloc_core.training.config import TrainConfig

    settings = dict(guidance="hard", steps=2, learning_rate=1e-3, instance_batch=1, prior_batch=1, prior_images=2)
    settings.update(prior_sampling_steps=2, **overrides)
    return TrainConfig(**settings)


@pytest.mark.parametrize("family", FAMILIES)
def test_token_positions_in_each_text_part_and_its_t5_vector_in_the_context(pack, models, family):
    model, clip, vae = models[family]
    with _session(pack, models, family) as bundle:
        text = bundle.text
        assert [name for name, _ in text.encoder_sizes] == (
            ["t5", "clip_l"] if family == "flux" else ["clip_l", "clip_g", "t5"]
        )
        t5_width = tiny.FLUX_T5 if family == "flux" else tiny.SD3_T5
        assert text.embedding_dim == t5_width + tiny.WIDTH_L + (0 if family == "flux" else tiny.WIDTH_G)
        token = torch.randn(1, text.embedding_dim)
        prompts = ["a <tw1> star on grass", "<tw1>, and a <tw1>"]
        encoded = text.encode(prompts, {"<tw1>": token})
        t5 = token[0, :t5_width] if family == "flux" else token[0, -t5_width:]
        # the layout of the same prompt with a one-piece word where the token is, in ComfyUI's own
        # tokens: the word's T5 positions (and, SD3, its CLIP-L positions, T5's after the CLIP rows)
        (word,) = text.t5_pieces("dog")
        for prompt, where in zip(prompts, encoded.token_positions):
            tokens = clip.tokenize(prompt.replace("<tw1>", "dog"))
            t5_at = [i for i, e in enumerate(tokens["t5xxl"][0]) if e[0] == word]
            clip_at = text.placer.word_positions(tokens, "dog")
            assert len(t5_at) == prompt.count("<tw1>") == len(clip_at)
            assert where == {"<tw1>": t5_at if family == "flux" else clip_at + [77 + p for p in t5_at]}
        assert encoded.context.shape == ((2, 256, t5_width) if family == "flux" else (2, 154, t5_width))
        for row, where in enumerate(encoded.token_positions):
            for position in where["<tw1>"]:
                if family == "flux" or position >= 77:
                    torch.testing.assert_close(encoded.context[row, position], t5)
        plain = text.encode(["a star on grass"], {})
        assert plain.token_positions == [{}] and torch.isfinite(plain.context).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_the_map_is_the_softmax_over_the_blocks_own_text_logits(pack, models, family):
    """Inside ComfyUI's block, the full q and k its attention kernel gets (recorded by an outer
    ``optimized_attention_override``, which our patch must pass through): the captured map is
    their joint softmax's image-query x text-key block, renormalised over the text keys."""
    from textloc_pack.nodes.comfy_internals import transformer_options
    from textloc_pack.textloc_core.attention.cross_attention import AttentionRouter

    with _session(pack, models, family) as bundle:
        denoiser = bundle.denoiser
        encoded = bundle.text.encode(["a <tw1> star"], {"<tw1>": torch.randn(1, bundle.text.embedding_dim)})
        slots = encoded.token_positions[0]["<tw1>"]
        latents = torch.randn(1, tiny.LATENT_CHANNELS, 16, 16, generator=torch.Generator().manual_seed(0))
        seen = []

        def record(func, *call, **kwargs):
            seen.append(
                (call[0], call[1], kwargs.get("skip_reshape", False), call[3] if len(call) > 3 else kwargs["heads"])
            )
            return func(*call, **kwargs)

        router = AttentionRouter(layers=None, token_slots=torch.tensor([slots]), keep_grad=False)
        with torch.no_grad(), denoiser.route_attention(router):
            transformer_options(denoiser.working_model)["optimized_attention_override"] = record
            try:
                denoiser.predict(latents, torch.tensor([400]), encoded.context, encoded.pooled)
            finally:
                transformer_options(denoiser.working_model).pop("optimized_attention_override")
    n_blocks = tiny.FLUX_DOUBLE_BLOCKS if family == "flux" else tiny.SD3_JOINT_BLOCKS
    prefix = "double_blocks" if family == "flux" else "joint_blocks"
    assert [m.layer for m in router.captured] == [f"{prefix}.{i}" for i in range(n_blocks)]
    n_text = encoded.context.shape[1]
    joint = [s for s in seen if (s[1].shape[2] if s[2] else s[1].shape[1]) == n_text + 64]
    assert len(joint) >= n_blocks  # every routed block's joint attention (Flux's single blocks too)
    for captured, (q, k, flat, heads) in zip(router.captured, joint):
        if not flat:
            q, k = (x.view(1, x.shape[1], heads, -1).transpose(1, 2) for x in (q, k))
        logits = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        image_to_text = logits.softmax(-1)[:, :, n_text:, :n_text]
        expected = (image_to_text / image_to_text.sum(-1, keepdim=True)).mean(1)[:, :, slots]
        torch.testing.assert_close(captured.probs, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_reach_only_the_text_kv_rows_and_the_tokens(pack, models, family):
    from textloc_pack.textloc_core.attention.cross_attention import AttentionRouter, KVDeltaInjector
    from textloc_pack.textloc_core.backends.fingerprint import kv_projections

    with _session(pack, models, family) as bundle:
        denoiser = bundle.denoiser
        token = torch.nn.Parameter(bundle.text.initial_embedding("star"))
        encoded = bundle.text.encode(["a <tw1> star"], {"<tw1>": token})
        latents = denoiser.encode_images(torch.rand(1, 3, 64, 64))
        router = AttentionRouter(layers=None, token_slots=torch.tensor([encoded.token_positions[0]["<tw1>"]]))
        projections = kv_projections(denoiser)
        assert list(projections) == KV_KEYS[family]
        with KVDeltaInjector(None, projections=projections, detach_start_token=False) as deltas:
            with denoiser.route_attention(router):
                out = denoiser.predict(latents, torch.tensor([300]), encoded.context, encoded.pooled)
                (out.square().mean() + sum(m.probs.mean() for m in router.captured)).backward()
            assert all(float(p.grad.abs().sum()) > 0 for p in deltas.parameters())
            # a delta moves only its own third of the fused qkv output
            qkv = next(iter(projections.values())).fused
            probe = torch.randn(1, 3, qkv.weight.shape[1])
            before = qkv(probe).detach()
            with torch.no_grad():
                deltas.deltas[KV_KEYS[family][0]].fill_(0.1)
            moved = (qkv(probe).detach() - before).abs().amax(dim=(0, 1)).view(3, -1).amax(-1)
            assert moved[0] == 0 and moved[1] > 0 and moved[2] == 0
        assert not any(p.requires_grad for p in denoiser.unet.parameters())
        t5_width = bundle.text.t5_width
        t5, clip_part = (
            (token.grad[0, :t5_width], token.grad[0, t5_width:])
            if family == "flux"
            else (token.grad[0, -t5_width:], token.grad[0, :-t5_width])
        )
        assert t5.abs().sum() > 0 and clip_part.abs().sum() > 0  # Flux's CLIP-L through the pooled vector


@pytest.mark.parametrize("family", FAMILIES)
def test_the_objective_is_the_models_own_model_sampling(pack, models, family):
    """Noise levels follow the MODEL's ``model_sampling`` (a ModelSampling node's shift included),
    and ``calculate_denoised`` turns the training target back into the clean latents."""
    comfy_backend, _ = pack
    import comfy_extras.nodes_model_advanced as advanced

    model, clip, vae = models[family]
    node = advanced.ModelSamplingFlux() if family == "flux" else advanced.ModelSamplingSD3()
    with torch.inference_mode():
        shifted = node.patch(model, 5.0, 0.5, 64, 64)[0] if family == "flux" else node.patch(model, 6.0)[0]
    t = torch.tensor([0, 250, 500, 999])
    levels = {}
    for name, which in (("loader", model), ("shifted", shifted)):
        with torch.inference_mode(), comfy_backend.training_session(which, clip, vae) as bundle:
            objective = bundle.denoiser.objective
            levels[name] = objective.sigmas(t)
            x0, noise = torch.randn(4, 16, 8, 8), torch.randn(4, 16, 8, 8)
            noisy = objective.add_noise(x0, noise, t)
            target = objective.training_target(x0, noise, t)
            denoised = objective.sampling.calculate_denoised(levels[name], target, noisy)
            torch.testing.assert_close(denoised, x0, atol=1e-5, rtol=1e-5)
    u = (t.double() + 1) / 1000
    if family == "flux":  # ModelSamplingFlux's default mu 1.15: exp(mu) / (exp(mu) + 1/u - 1)
        expected = math.exp(1.15) / (math.exp(1.15) + 1 / u - 1)
    else:  # ModelSamplingSD3's default shift 3
        expected = 3 * u / (1 + 2 * u)
    torch.testing.assert_close(levels["loader"], expected.float())
    assert levels["shifted"][-1] == 1.0 and not torch.allclose(levels["shifted"], levels["loader"])


@pytest.mark.parametrize("method", ["hard", "soft", "none"])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_guidance_trains_with_prior(pack, models, family, method, tmp_path, monkeypatch):
    comfy_backend, _ = pack
    from textloc_pack.textloc_core.training import prior
    from textloc_pack.textloc_core.training.loop import train

    monkeypatch.setattr(prior, "_MEMORY", {})
    model, clip, vae = models[family]
    with torch.inference_mode(), comfy_backend.training_session(model, clip, vae) as bundle:
        base = {k: w.weight.detach().clone() for k, w in bundle.denoiser.text_qkv.items()}
        result = train(bundle, _concepts(), _config(guidance=method), prior_cache_dir=tmp_path)
        assert all(torch.equal(base[k], w.weight) for k, w in bundle.denoiser.text_qkv.items())  # the base is untouched
    assert result.steps_done == 2 and len(list(tmp_path.glob("prior-*.safetensors"))) == 1
    assert (result.history[0]["attention"] > 0) == (method != "none") and result.history[0]["prior"] > 0
    assert sorted(result.kv_deltas) == sorted(KV_KEYS[family])
    assert all(float(d.abs().sum()) > 0 for d in result.kv_deltas.values())
    assert result.token_embeddings["<star1>"].shape == (1, bundle.text.embedding_dim)


@pytest.mark.parametrize("family", FAMILIES)
def test_resume_is_bit_identical(pack, models, family, tmp_path, resume_is_bit_identical):
    comfy_backend, _ = pack
    model, clip, vae = models[family]
    config = _config(steps=4, checkpoint_every=2, prior_images=0, prior_batch=0)
    with torch.inference_mode(), comfy_backend.training_session(model, clip, vae) as bundle:
        resume_is_bit_identical(bundle, _concepts(), config, tmp_path)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_checkpointing_trains_the_same(pack, models, family):
    comfy_backend, _ = pack
    from textloc_pack.textloc_core.training.loop import train

    model, clip, vae = models[family]
    results = []
    for checkpointing in (False, True):
        config = _config(gradient_checkpointing=checkpointing, prior_images=0, prior_batch=0)
        with torch.inference_mode(), comfy_backend.training_session(model, clip, vae) as bundle:
            results.append(train(bundle, _concepts(), config))
    plain, recomputed = results
    for key in plain.kv_deltas:
        torch.testing.assert_close(recomputed.kv_deltas[key], plain.kv_deltas[key], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_autocast_trains_close_to_float32(pack, models, family):
    from textloc_pack.textloc_core.training.loop import train

    losses = []
    for precision in ("fp32", "bf16"):
        with _session(pack, models, family) as bundle:
            config = _config(mixed_precision=precision, prior_images=0, prior_batch=0)
            losses.append([h["loss"] for h in train(bundle, _concepts(), config).history])
    assert all(math.isfinite(x) for x in losses[1]) and losses[0] != losses[1]
    assert max(abs(a - b) / a for a, b in zip(*losses)) < 0.05


def test_an_fp8_base_trains_on_the_cpu(pack):
    """UNETLoader's weight_dtype fp8_e4m3fn: weights stored in fp8, computed in float32."""
    comfy_backend, _ = pack
    from textloc_pack.textloc_core.training.loop import train

    try:
        torch.zeros(2, dtype=torch.float8_e4m3fn).float()
    except (RuntimeError, TypeError) as exc:  # pragma: no cover - depends on the torch build
        pytest.skip(f"this CPU build of torch cannot convert float8_e4m3fn: {exc}")
    with torch.inference_mode():
        model, clip, vae = tiny.build_all("flux", weight_dtype=torch.float8_e4m3fn)
    with torch.inference_mode(), comfy_backend.training_session(model, clip, vae) as bundle:
        assert next(iter(bundle.denoiser.text_qkv.values())).weight.dtype == torch.float8_e4m3fn
        result = train(bundle, _concepts(), _config(prior_images=0, prior_batch=0))
    assert result.steps_done == 2 and all(math.isfinite(h["loss"]) for h in result.history)
    assert all(float(d.abs().sum()) > 0 for d in result.kv_deltas.values())


def _settings(prompt, negative, tokens, steps, cfg, width, height, batch_size):
    """Attention Preview's widgets by name (seed 0, ComfyUI's euler sampler, simple schedule)."""
    from textloc_pack.nodes.preview_node import PreviewSettings

    return PreviewSettings(
        prompt=prompt,
        negative=negative,
        tokens=tokens,
        seed=0,
        steps=steps,
        cfg=cfg,
        sampler_name="euler",
        scheduler="simple",
        width=width,
        height=height,
        batch_size=batch_size,
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_preview_maps_a_word_while_comfyui_samples(pack, models, family):
    """ComfyUI's own sampler (Flux at CFG 1, SD3 with a negative prompt) with the word's maps
    captured in the routed blocks: an image per seed, a map per word, one heat map per pair."""
    from textloc_pack.nodes import preview_node

    model, clip, vae = models[family]
    cfg, negative = (1.0, "") if family == "flux" else (3.0, "blurry")
    with torch.inference_mode():
        images, overlays, masks, mapped = preview_node.attention_preview(
            model, clip, vae, _settings("a photo of a star and a dog", negative, "star, dog", 2, cfg, 64, 48, 2)
        )
    assert mapped == "star, dog" and images.shape == (2, 48, 64, 3) and overlays.shape == (4, 48, 64, 3)
    assert masks.shape == (4, 48, 64) and torch.isfinite(masks).all()
    assert all(float(m.max()) == 1.0 and float(m.min()) == 0.0 for m in masks)  # min-max normalised maps
    assert not torch.equal(masks[0], masks[1])  # the two words look at different places
    with pytest.raises(ValueError, match="do not occur in the prompt"), torch.inference_mode():
        preview_node.attention_preview(model, clip, vae, _settings("a photo", "", "star", 1, cfg, 64, 64, 1))
