"""textloc's backend protocols (``textloc_core.backends.base``) for ComfyUI's MODEL / CLIP / VAE.

What this module is for: the trainer and the attention preview only see a ``ModelBundle``;
this file turns ComfyUI's objects into one, without changing the objects the rest of the
graph holds. It uses ComfyUI's public surfaces; the few things those cannot give live in
``comfy_internals`` (one package, tested on every supported ComfyUI version).

* Text: the CLIP object's ``tokenize`` / ``encode_from_tokens``, with identifier tokens
  placed into the token lists as tensors by ``comfy_tokens.IdentifierPlacer`` (the path a
  stock ``embedding:NAME`` file takes, so a trained token written to ``models/embeddings``
  gives the same context as our in-memory one). Autograd reaches the tensors through
  ``comfy_internals.differentiable_text_encoder``.
* Denoiser: ``predict`` is one UNet call in DDPM time (``comfy_internals.unet_forward``)
  with the ModelPatcher's transformer_options, so other packs' patches still run.
* Routing: ``route_attention`` clones the ModelPatcher and sets ``set_model_attn2_replace``
  for the selected layers only; while it is open, ``predict`` and the preview's sampler use
  that clone (``working_model``). If another pack already replaced one of those layers, its replacement still
  produces the output and our router only observes (captures) the attention alongside: we
  never drop someone else's patch.

ComfyUI runs every node under ``torch.inference_mode()``. Training must leave it, and the
frozen weights the backward pass saves must not be inference tensors; ``training_session``
swaps them for ordinary clones (same values) while the model is loaded.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from ..textloc_core.attention.cross_attention import AttentionRouter, find_cross_attention
from ..textloc_core.backends.base import EncodedPrompts, ModelBundle, mean_of_pieces
from ..textloc_core.backends.fingerprint import base_model_fingerprint
from .comfy_cancel import cancel_as_core
from .comfy_internals import (
    attention_heads,
    attn2_replacements,
    checkpointed_blocks,
    differentiable_text_encoder,
    dit_layout,
    latents_in,
    latents_out,
    model_parts,
    ordinary_weights,
    patchers,
    size_conditioning,
    text_encoder,
    text_encoder_tables,
    transformer_options,
    unet_forward,
    vae_scale_factor,
)
from .comfy_tokens import IdentifierPlacer

_LAYER_RE = re.compile(
    r"^(?:diffusion_model\.)?(?:(input_blocks|output_blocks)\.(\d+)\.\d+|(middle_block)\.\d+)\.transformer_blocks\.(\d+)\.attn2$"
)


# ----------------------------------------------------------------------------- helpers
def canonical_layer_name(module_name: str) -> str:
    """ComfyUI module names already are the canonical LDM names; drop a model prefix."""
    for prefix in ("model.diffusion_model.", "diffusion_model."):
        if module_name.startswith(prefix):
            return module_name[len(prefix) :]
    return module_name


def attn2_patch_key(layer: str) -> tuple[str, int, int]:
    """Canonical attn2 name -> the (block_name, number, transformer_index) of ``set_model_attn2_replace``.

    ``input_blocks.4.1.transformer_blocks.0.attn2`` -> ("input", 4, 0);
    ``middle_block.1.transformer_blocks.0.attn2`` -> ("middle", 0, 0) (ComfyUI numbers the
    middle block 0); output blocks like input blocks.
    """
    match = _LAYER_RE.match(layer)
    if not match:
        raise ValueError(
            f"layer {layer!r} is not a UNet attn2 layer name (input_blocks.N.M.transformer_blocks.K.attn2)"
        )
    transformer = int(match.group(4))
    if match.group(3):
        return ("middle", 0, transformer)
    return ("input" if match.group(1) == "input_blocks" else "output", int(match.group(2)), transformer)


def base_fingerprint_and_weights(model) -> tuple[str, dict[str, torch.Tensor]]:
    """Fingerprint and K/V weights of a ModelPatcher's *base* weights.

    ``get_key_patches`` (the call ComfyUI's model-merging nodes use) gives each weight as the
    base value plus its patches, whatever LoRAs or adapters are applied or loaded at the
    moment; the base values are what identifies the base model.
    """
    if dit_layout(model_parts(model)) is not None:  # Flux / SD3: the text K/V rows of the fused qkv
        from .comfy_dit_backend import dit_fingerprint_and_weights

        return dit_fingerprint_and_weights(model)
    weights = {}
    key_patches = None
    for name in find_cross_attention(model_parts(model).unet):
        layer = canonical_layer_name(name)
        for proj in ("to_k", "to_v"):
            if key_patches is None:
                key_patches = model.get_key_patches("diffusion_model.")
            base = key_patches[f"diffusion_model.{layer}.{proj}.weight"][0]
            weights[f"{layer}.{proj}"] = base[0] if isinstance(base, tuple) else base
    return base_model_fingerprint(weights), weights


# ----------------------------------------------------------------------------- text
class ComfyTextBackend:
    """``TextBackend`` over a ComfyUI CLIP object (SD1.x / SD2.x / SDXL CLIP encoders)."""

    def __init__(self, clip, pooled: bool = False):
        """``pooled``: also return the pooled text embedding (the denoiser needs it: SDXL)."""
        self.clip = clip
        self.pooled = pooled
        self.tables = text_encoder_tables(clip)
        self.placer = IdentifierPlacer.for_clip(clip)
        self.embedding_dim = self.placer.total_dim
        # (file key, width) per encoder, for stock embedding files (SDXL: clip_l then clip_g)
        self.encoder_sizes = [(f"clip_{key}", dim) for key, dim in self.placer.dims.items()]

    # -- vocabulary
    def initial_embedding(self, init_word: str, what: str = "init_word") -> torch.Tensor:
        # the core's one rule (mean of the word's pieces), per encoder (SDXL: clip_l, clip_g)
        parts = [
            mean_of_pieces([self.tables[key][p] for p in pieces], init_word, what)
            for key, pieces in self.placer.pieces(init_word).items()
        ]
        with torch.inference_mode(False):
            return torch.cat(parts).unsqueeze(0).clone()

    def check_token(self, token: str) -> None:
        self.placer.check_new_token(token)

    # -- encoding
    def encode(self, prompts: list[str], token_embeddings: dict[str, torch.Tensor]) -> EncodedPrompts:
        contexts, pooled, positions = [], [], []
        for prompt in prompts:
            tokens, where = self.placer.tokenize(prompt, token_embeddings)
            with cancel_as_core("text encoding"):
                cond, pool = self.clip.encode_from_tokens(tokens, return_pooled=True)
            contexts.append(cond)
            pooled.append(pool)
            positions.append(where)
        longest = max(c.shape[1] for c in contexts)
        padded = []
        for cond in contexts:
            if longest % cond.shape[1]:
                raise ValueError(
                    "prompts: prompts of different 77-token chunk counts cannot be batched; shorten the prompt"
                )
            padded.append(cond.repeat(1, longest // cond.shape[1], 1))
        if self.pooled and any(p is None for p in pooled):
            raise ValueError(
                "clip: this text encoder gives no pooled output, which the model needs; use the checkpoint's own CLIP"
            )
        return EncodedPrompts(
            context=torch.cat(padded), token_positions=positions, pooled=torch.cat(pooled) if self.pooled else None
        )


# ----------------------------------------------------------------------------- denoiser
class ComfyDenoiserBackend:
    """``DenoiserBackend`` over a ComfyUI ModelPatcher (SD1.x / SD2.x / SDXL UNets) and VAE."""

    def __init__(self, model, vae, device: torch.device | None = None, *, training: bool = True):
        """``training=False`` (the preview: ComfyUI's sampler conditions the model itself)
        accepts any UNet with attn2 layers; training needs ``predict`` to be complete from
        (x_t, t, context, pooled): SD1.x/SD2.x, or SDXL (adm from pooled + size)."""
        self.working_model = model.clone()  # our routing patches never reach the caller's MODEL
        self.parts = parts = model_parts(model)
        self.unet = parts.unet
        self.vae = vae
        self.prediction_type = parts.prediction
        if training and parts.prediction not in ("epsilon", "v_prediction"):
            raise ValueError(
                f"model: prediction type {parts.prediction.upper()} is not supported; Textual Localization trains "
                "epsilon- or v-prediction UNets (SD1.x, SD2.x, SDXL) and the flow models Flux.1 and SD3 / SD3.5"
            )
        self.needs_pooled = getattr(self.unet, "num_classes", None) is not None
        if training and self.needs_pooled and not parts.is_sdxl:
            raise ValueError(
                f"model: {type(parts.base_model).__name__} needs extra conditioning TextLoc Train does not build; "
                "it trains SD1.x, SD2.x and SDXL-family UNets (the Apply and Preview nodes work with others too)"
            )
        find_cross_attention(self.unet)  # raises a clear error for models without attn2
        self.latent_channels = parts.latent_channels
        self.vae_scale_factor = vae_scale_factor(vae)
        self.device = device if device is not None else parts.device
        self.dtype = parts.dtype

    def canonical_layer_name(self, module_name: str) -> str:
        return canonical_layer_name(module_name)

    # -- latents
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            raise ValueError("vae: a VAE is needed to encode the training images")
        with torch.no_grad(), cancel_as_core("VAE encoding"):
            latents = self.vae.encode(images.movedim(1, -1).float().cpu())
            return latents_in(self.parts, latents.float()).to(self.device)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            pixels = self.vae.decode(latents_out(self.parts, latents.float()))
            return pixels.movedim(-1, 1).float().clamp(0, 1)

    # -- UNet
    def transformer_options(self) -> dict:
        """The working model's transformer_options (other packs' patches, our routing)."""
        return transformer_options(self.working_model)

    def predict(
        self, noisy_latents: Tensor, timesteps: Tensor, context: Tensor, pooled: Tensor | None = None
    ) -> Tensor:
        y = None
        if self.needs_pooled:
            if pooled is None:
                raise ValueError("model: this UNet (SDXL) needs the pooled text embedding of its CLIP")
            height, width = (int(side) * self.vae_scale_factor for side in noisy_latents.shape[-2:])
            y = size_conditioning(self.parts.base_model, pooled.to(self.device), height, width).to(self.dtype)
        with cancel_as_core("a UNet call"):  # every one: prior generation and training steps stop on Cancel
            out = unet_forward(
                self.unet,
                noisy_latents.to(self.device, self.dtype),
                timesteps.to(self.device).float(),
                context.to(self.device, self.dtype),
                self.transformer_options(),
                y,
            )
        return out.float()

    @contextmanager
    def gradient_checkpointing(self) -> Iterator[None]:
        """Recompute the UNet's transformer and residual blocks in the backward pass instead
        of keeping their activations (less memory, about a third more time).

        Each block's forward is wrapped for the context's life. The transformer_options dict a
        block receives is copied when it runs, because the UNet rewrites its block bookkeeping
        before the backward pass recomputes the block, and the attn2 patch it selects must be
        the same both times.
        """
        from torch.utils.checkpoint import checkpoint

        blocks = checkpointed_blocks(self.unet)

        def wrap(block):
            forward = block.forward

            def checkpointed(*args, **kwargs):
                if not torch.is_grad_enabled():
                    return forward(*args, **kwargs)
                args = tuple(dict(a) if isinstance(a, dict) else a for a in args)
                kwargs = {k: dict(v) if isinstance(v, dict) else v for k, v in kwargs.items()}
                return checkpoint(forward, *args, use_reentrant=False, **kwargs)

            return checkpointed

        before = [block.__dict__.get("forward") for block in blocks]  # another wrapper stays
        for block in blocks:
            block.forward = wrap(block)
        try:
            yield
        finally:
            for block, forward in zip(blocks, before):
                block.__dict__.pop("forward", None)
                if forward is not None:
                    block.forward = forward

    @contextmanager
    def route_attention(self, router: AttentionRouter):
        """While open, ``self.working_model`` is a clone with our attn2 replacements set."""
        layers = [canonical_layer_name(n) for n in find_cross_attention(self.unet)]
        previous = self.working_model
        routed = previous.clone()
        existing = attn2_replacements(routed)
        for layer in layers:
            if router.selects(layer):
                key = attn2_patch_key(layer)
                routed.set_model_attn2_replace(_routed_patch(router, layer, existing.get(key)), *key)
        self.working_model = routed
        try:
            yield router
        finally:
            self.working_model = previous


def training_denoiser(model, vae) -> ComfyDenoiserBackend:
    """The denoiser TextLoc Train builds for ``model`` (refusing a model it cannot train): Flux /
    SD3's own, else the UNet's. Checks read its side rule before any model is loaded."""
    if dit_layout(model_parts(model)) is not None:
        from .comfy_dit_backend import ComfyDiTDenoiser  # it builds on this module

        return ComfyDiTDenoiser(model, vae)
    return ComfyDenoiserBackend(model, vae)


def _routed_patch(router: AttentionRouter, layer: str, existing):
    """An attn2 replace function sending ``layer`` through ``router``.

    When another pack already replaced this layer, its function still computes the output;
    the router then only captures (explicit softmax on the same q/k/v), so both packs work.
    """

    before = getattr(router, "before_call", None)

    def patch(q, k, v, extra_options):
        heads = attention_heads(extra_options)
        if before is not None:  # e.g. the preview learns which rows are conditional
            before(extra_options)
        if existing is None:
            return router(layer, q, k, v, heads)
        router(layer, q, k, v, heads)
        return existing(q, k, v, extra_options)

    patch.textloc_layer = layer
    patch.wrapped = existing
    return patch


# ----------------------------------------------------------------------------- bundle
@contextmanager
def training_session(model, clip, vae) -> Iterator[ModelBundle]:
    """A ModelBundle for training, with inference mode off and grads on.

    Loads MODEL and CLIP onto the compute device, swaps inference weights for ordinary
    ones (see ``ordinary_weights``), and on exit frees the cache ComfyUI's allocator holds.
    """
    import comfy.model_management as mm

    if dit_layout(model_parts(model)) is not None:  # Flux / SD3: their own backend
        from .comfy_dit_backend import dit_training_session

        with dit_training_session(model, clip, vae) as bundle:
            yield bundle
        return
    with torch.inference_mode(False), torch.enable_grad():
        denoiser = ComfyDenoiserBackend(model, vae)
        mm.load_models_gpu(patchers(denoiser.working_model, clip), force_full_load=True)
        encoder = text_encoder(clip)
        with ordinary_weights(denoiser.unet, encoder), differentiable_text_encoder(encoder):
            text = ComfyTextBackend(clip, pooled=denoiser.needs_pooled)
            with bundle_of(text, denoiser, base_fingerprint_and_weights(denoiser.working_model)[0]) as bundle:
                yield bundle


@contextmanager
def bundle_of(text, denoiser, fingerprint: str) -> Iterator[ModelBundle]:
    """The session's ModelBundle; on exit, the cache ComfyUI's allocator holds is freed."""
    import comfy.model_management as mm

    try:
        yield ModelBundle(
            text=text,
            denoiser=denoiser,
            fingerprint=fingerprint,
            device=torch.device(denoiser.device),
            compute_dtype=denoiser.dtype,
        )
    finally:
        mm.soft_empty_cache()
