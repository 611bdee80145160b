"""Every place where textloc relies on a part of ComfyUI that has no public surface.

Everything else in nodes/ uses public surfaces only: the V3 node API, ModelPatcher's clone /
setters / ``get_key_patches`` / ``add_patches``, the CLIP object's ``tokenize`` /
``encode_from_tokens``, the VAE's ``encode`` / ``decode``. What those cannot give is one
function here, saying what it relies on:

* training: gradients through the text encoder (and Flux's blocks), the embedding table to
  start a new token from, a direct UNet / DiT call, SDXL's adm vector, inference-mode weights,
  checkpointed blocks, ComfyUI's training switch;
* what a MODEL / CLIP / VAE holds: its UNet or DiT blocks, prediction type, noise schedule,
  latent format, dtype and device, its transformer_options, attn2 and dit replacements, the
  text-encoder module and T5's token list, the patchers, the VAE's scale;
* what the TinyWorld loader sets: the VAE's scale, how ComfyUI rebuilds the model (``set_reloader``).

tests/integration/test_comfy_surface.py lists every ComfyUI name these use (``SURFACE``,
``INSTANCE_ATTRIBUTES``, ``OPTION_KEYS``), checks them on every supported ComfyUI version, and
fails when another module of nodes/ reads one of those attributes or keys itself.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# The token-dict keys of CLIP-family text encoders, in the order an adapter stores their
# slices of a token's vector (SDXL: clip_l's 768 values, then clip_g's 1280).
CLIP_KEYS = ("l", "g", "h")


def text_encoder_tables(clip) -> dict[str, torch.Tensor]:
    """Input-embedding table of each CLIP-family text encoder of a ComfyUI CLIP, by token key.

    Relies on: the token dict key ``k`` ("l", "g") belonging to ``clip.cond_stage_model.clip_k``
    (``SD1ClipModel`` / ``SDXLClipModel`` name their encoders so), and that encoder's
    ``transformer.get_input_embeddings()`` being the table token ids index.
    """
    tables = {}
    for key in CLIP_KEYS:
        encoder = getattr(clip.cond_stage_model, f"clip_{key}", None)
        transformer = getattr(encoder, "transformer", None)
        if transformer is not None and hasattr(transformer, "get_input_embeddings"):
            tables[key] = transformer.get_input_embeddings().weight
    if not tables:
        raise ValueError(
            "clip: this text encoder is not a CLIP-family encoder (SD1.x/SD2.x/SDXL); Textual "
            "Localization needs one to place identifier tokens"
        )
    return tables


def _clip_layer_forward(layer, x, mask=None, optimized_attention=None):
    """``comfy.clip_model.CLIPLayer.forward`` without its in-place residual adds (same values).

    ComfyUI writes ``x += ...``, which overwrites the tensor LayerNorm saved for backward;
    gradients to an injected token embedding then fail.
    """
    x = x + layer.self_attn(layer.layer_norm1(x), mask, optimized_attention)
    return x + layer.mlp(layer.layer_norm2(x))


@contextmanager
def differentiable_text_encoder(clip_model: nn.Module) -> Iterator[None]:
    """Let autograd pass through every ``CLIPLayer`` of ``clip_model`` while the context is open.

    Relies on: ``comfy.clip_model.CLIPLayer`` having ``layer_norm1``, ``self_attn``,
    ``layer_norm2``, ``mlp`` and ``forward(x, mask, optimized_attention)``. Tensor entries of a
    token list are concatenated into the input embeddings (``SDClipModel.process_tokens``), so
    with this the context is differentiable with respect to them.
    """
    import comfy.clip_model

    layers = [m for m in clip_model.modules() if isinstance(m, comfy.clip_model.CLIPLayer)]
    for layer in layers:
        layer.forward = functools.partial(_clip_layer_forward, layer)
    try:
        yield
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)


@contextmanager
def ordinary_weights(*modules: nn.Module) -> Iterator[None]:
    """Swap inference-mode parameters/buffers of ``modules`` for ordinary clones.

    Relies on: ComfyUI's loaders running under ``torch.inference_mode()``, so every weight
    they made is an inference tensor, which autograd cannot save for backward. Values are
    unchanged, so nothing is restored on exit; the clones simply stay.
    """
    with torch.inference_mode(False):
        for module in modules:
            for sub in module.modules():
                for name, param in list(sub._parameters.items()):
                    if param is not None and param.is_inference():
                        sub._parameters[name] = nn.Parameter(param.clone(), requires_grad=False)
                    elif param is not None:
                        param.requires_grad_(False)
                for name, buf in list(sub._buffers.items()):
                    if buf is not None and buf.is_inference():
                        sub._buffers[name] = buf.clone()
    yield


def unet_forward(
    unet: nn.Module,
    noisy_latents: torch.Tensor,
    timesteps: torch.Tensor,
    context: torch.Tensor,
    transformer_options: dict,
    y: torch.Tensor | None = None,
) -> torch.Tensor:
    """One call of a ComfyUI UNet in DDPM time (integer timesteps, unscaled latents).

    Relies on: ``model.model.diffusion_model`` (``comfy.ldm.modules.diffusionmodules.
    openaimodel.UNetModel``) taking ``(x, timesteps=, context=, y=, transformer_options=)``,
    ``y`` being the adm vector of UNets with ``num_classes`` (SDXL). ``BaseModel.apply_model``
    would add k-diffusion sigma scaling the DDPM loss does not use. The options dict is copied
    because the UNet writes block bookkeeping into it.
    """
    extra = {} if y is None else {"y": y}
    return unet(
        noisy_latents, timesteps=timesteps, context=context, transformer_options=dict(transformer_options), **extra
    )


def size_conditioning(base_model, pooled: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """SDXL's adm vector ``y`` (B, adm) from the pooled text embedding and the image size in
    pixels, uncropped, as ComfyUI's sampler builds it for a latent of that size.

    Relies on: ``comfy.model_base.SDXL.encode_adm(pooled_output=, width=, height=, crop_w=,
    crop_h=, target_width=, target_height=)`` (pooled, then 256-wide Fourier features of the
    six sizes). It is differentiable with respect to ``pooled``.
    """
    adm = base_model.encode_adm(
        pooled_output=pooled, width=width, height=height, crop_w=0, crop_h=0, target_width=width, target_height=height
    )
    return adm.to(pooled.device, pooled.dtype)


def checkpointed_blocks(unet: nn.Module) -> list[nn.Module]:
    """The UNet modules whose activations gradient checkpointing recomputes: every transformer
    block and residual block (where activation memory goes at high resolution).

    Relies on: ``comfy.ldm.modules.attention.BasicTransformerBlock``,
    ``comfy.ldm.modules.diffusionmodules.openaimodel.ResBlock`` and, in a diffusion transformer,
    ``comfy.ldm.flux.layers.DoubleStreamBlock`` / ``SingleStreamBlock`` and ``mmdit.JointBlock``.
    """
    from comfy.ldm.flux.layers import DoubleStreamBlock, SingleStreamBlock
    from comfy.ldm.modules.attention import BasicTransformerBlock
    from comfy.ldm.modules.diffusionmodules.mmdit import JointBlock
    from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

    kinds = (BasicTransformerBlock, ResBlock, DoubleStreamBlock, SingleStreamBlock, JointBlock)
    return [m for m in unet.modules() if isinstance(m, kinds)]


def set_reloader(obj, factory, *args) -> None:
    """Tell ComfyUI how to build this model afresh, as its own loaders do for theirs.

    Relies on: ``ModelPatcher.cached_patcher_init`` = ``(factory, args)``, where
    ``factory(*args, disable_dynamic=True)`` returns a new ModelPatcher with the same weights
    (``obj``: a MODEL, or a CLIP or VAE, whose patcher it is set on).
    ComfyUI 0.33 calls it for ``clone(force_deepcopy=True)`` (TrainLoraNode),
    ``clone(disable_dynamic=True)`` and multi-GPU copies, and refuses those without it; 0.3.64
    has no such attribute and never reads it.
    """
    patchers(obj)[0].cached_patcher_init = (factory, tuple(args))


# ----------------------------------------------------------------------------- what a MODEL, CLIP and VAE hold
@dataclass(frozen=True)
class ModelParts:
    """What the pack reads off a MODEL (a ModelPatcher) for which ComfyUI has no public call."""

    base_model: Any
    """The ``comfy.model_base.BaseModel`` (SDXL's adm, the latent format live there)."""
    unet: nn.Module
    prediction: str
    """"epsilon", "v_prediction", or ComfyUI's ModelType name in lower case (flow models...)."""
    is_sdxl: bool
    latent_channels: int
    dtype: torch.dtype
    """The dtype the UNet computes in (its manual-cast dtype when it has one)."""
    device: torch.device
    """Where ComfyUI loads the model to compute."""
    tagged_resolution: int | None
    """The native side in pixels a loader tagged the model with (``NATIVE_RESOLUTION_ATTR``)."""


#: attribute of a MODEL's BaseModel giving the side in pixels it was trained at (TextLoc Train
#: caps its resolution by it; the TinyWorld loader sets it); ComfyUI's model classes carry no such number
NATIVE_RESOLUTION_ATTR = "textloc_native_resolution"


def model_parts(model) -> ModelParts:
    """A MODEL's UNet, prediction type, latent channels, compute dtype and device.

    Relies on: ``ModelPatcher.model`` (a ``comfy.model_base.BaseModel``: ``diffusion_model``,
    ``model_type`` a ``comfy.model_base.ModelType``, ``latent_format.latent_channels``,
    ``get_dtype()``, ``manual_cast_dtype``), ``ModelPatcher.load_device`` and
    ``comfy.model_base.SDXL``.
    """
    import comfy.model_base

    base = model.model
    types = {comfy.model_base.ModelType.EPS: "epsilon", comfy.model_base.ModelType.V_PREDICTION: "v_prediction"}
    dtype = base.manual_cast_dtype if base.manual_cast_dtype is not None else base.get_dtype()
    tagged = getattr(base, NATIVE_RESOLUTION_ATTR, None)
    return ModelParts(
        base_model=base,
        unet=base_unet(base),
        prediction=types.get(base.model_type, base.model_type.name.lower()),
        is_sdxl=isinstance(base, comfy.model_base.SDXL),
        latent_channels=int(base.latent_format.latent_channels),
        dtype=dtype,
        device=model.load_device,
        tagged_resolution=int(tagged) if tagged else None,
    )


def base_unet(base_model) -> nn.Module:
    """The UNet of a ``comfy.model_base.BaseModel``. Relies on: its ``diffusion_model``."""
    return base_model.diffusion_model


def latents_in(parts: ModelParts, latents: torch.Tensor) -> torch.Tensor:
    """VAE latents -> the scaled latents the UNet sees (SD1's x 0.18215...).

    Relies on: ``BaseModel.latent_format.process_in``."""
    return parts.base_model.latent_format.process_in(latents)


def latents_out(parts: ModelParts, latents: torch.Tensor) -> torch.Tensor:
    """The UNet's latents -> what the VAE decodes. Relies on: ``latent_format.process_out``."""
    return parts.base_model.latent_format.process_out(latents)


def transformer_options(model) -> dict:
    """A MODEL's transformer_options (other packs' patches, our routing), as its UNet gets them.

    Relies on: ``ModelPatcher.model_options["transformer_options"]``."""
    return model.model_options.get("transformer_options", {})


def attn2_replacements(model) -> dict:
    """The attn2 replace functions set on a MODEL, by ``(block_name, number, transformer_index)``.

    Relies on: ``set_model_attn2_replace`` storing them in
    ``model_options["transformer_options"]["patches_replace"]["attn2"]``."""
    return transformer_options(model).get("patches_replace", {}).get("attn2", {})


def attention_heads(extra_options: dict) -> int:
    """The head count an attn2 replace function is called with. Relies on: ``extra_options["n_heads"]``."""
    return int(extra_options["n_heads"])


def conditional_chunks(extra_options: dict) -> list[int]:
    """Which chunks of an attn2 call's (or dit block's) batch are conditional (0) or unconditional
    (1). Relies on: the sampler's ``extra_options["cond_or_uncond"]`` (absent: one conditional chunk)."""
    return list(extra_options.get("cond_or_uncond") or [0])


def text_encoder(clip) -> nn.Module:
    """A CLIP's text-encoder module. Relies on: ``comfy.sd.CLIP.cond_stage_model``."""
    return clip.cond_stage_model


def clip_text_transformer(clip, key: str = "l") -> nn.Module:
    """The transformers model of a CLIP's ``clip_<key>`` encoder (weights are loaded into it).
    Relies on: ``cond_stage_model.clip_<key>.transformer`` (``SD1ClipModel`` names it so)."""
    return getattr(text_encoder(clip), f"clip_{key}").transformer


def patchers(*objects) -> list:
    """The ModelPatchers behind MODEL, CLIP and VAE objects (a MODEL is one), for
    ``load_models_gpu``. Relies on: ``comfy.sd.CLIP.patcher`` / ``comfy.sd.VAE.patcher``."""
    return [getattr(o, "patcher", o) for o in objects]


def vae_scale_factor(vae) -> int:
    """Pixels per latent cell of a VAE. Relies on: ``comfy.sd.VAE.spacial_compression_encode()``; none: SD's 8."""
    return int(vae.spacial_compression_encode()) if vae is not None else 8


def set_vae_scale_factor(vae, factor: int) -> None:
    """Set a VAE's pixels per latent cell, for a VAE ComfyUI builds without detecting it.

    Relies on: ``comfy.sd.VAE.downscale_ratio`` / ``upscale_ratio``."""
    vae.downscale_ratio = factor
    vae.upscale_ratio = factor


# ----------------------------------------------------------------------------- diffusion transformers (Flux, SD3)
#: family -> (the diffusion model's joint blocks, their text attention)
DIT_BLOCKS = {"flux": ("double_blocks", "txt_attn"), "sd3": ("joint_blocks", "context_block.attn")}


def dit_layout(parts: ModelParts) -> tuple[str, dict[str, nn.Module], int] | None:
    """(family "flux" / "sd3", the fused text q/k/v linear of each joint block by canonical name
    ``double_blocks.i.txt_attn`` / ``joint_blocks.i.context_block.attn``, patch side in latent
    cells) of a Flux.1 or SD3 / SD3.5 MODEL; None for other models.

    Relies on: ``comfy.model_base.Flux`` / ``SD3`` (exact classes: Flux's subclasses route tokens
    otherwise), their ``double_blocks[i].txt_attn.qkv`` / ``joint_blocks[i].context_block.attn.qkv``
    (one Linear, rows q, k, v thirds split per head), Flux blocks running ``[text, image]`` (not
    ``flipped_img_txt``), and the DiT's ``patch_size``."""
    import comfy.model_base

    family = {comfy.model_base.Flux: "flux", comfy.model_base.SD3: "sd3"}.get(type(parts.base_model))
    if family is None:
        return None
    blocks_name, attention = DIT_BLOCKS[family]
    layers = {}
    for i, block in enumerate(getattr(parts.unet, blocks_name)):
        if getattr(block, "flipped_img_txt", False):
            raise ValueError(f"model: block {i} puts image tokens before text; TextLoc trains Flux.1 and SD3 layouts")
        owner = block.txt_attn if family == "flux" else block.context_block.attn
        layers[f"{blocks_name}.{i}.{attention}"] = owner.qkv
    return family, layers, int(parts.unet.patch_size)


def model_sampling(model):
    """The MODEL's noise schedule (``ModelSamplingFlux`` / ``ModelSamplingSD3``, shifted as a
    ModelSampling node set it). Relies on: ``ModelPatcher.get_model_object("model_sampling")`` and
    its ``percent_to_sigma``, ``timestep``, ``noise_scaling``, ``calculate_denoised``."""
    return model.get_model_object("model_sampling")


def dit_forward(unet, family, x, timestep, context, pooled, options: dict, guidance: float) -> torch.Tensor:
    """One call of a Flux / MMDiT model at its own timestep (``model_sampling.timestep(sigma)``).

    Relies on: ``Flux.forward(x, timestep, context, y, guidance, transformer_options=)`` and
    ``OpenAISignatureMMDITWrapper.forward(x, timesteps, context, y, transformer_options=)``, ``y``
    the pooled text vector (both ``encode_adm`` give it)."""
    extra = {"guidance": torch.full((x.shape[0],), guidance, device=x.device)} if family == "flux" else {}
    return unet(x, timestep, context=context, y=pooled, transformer_options=dict(options), **extra)


def dit_block_replacements(model) -> dict:
    """The ``patches_replace["dit"]`` block functions set on a MODEL, by ``("double_block", i)``."""
    return transformer_options(model).get("patches_replace", {}).get("dit", {})


def _residual_safe(forward):
    """``forward`` of a Flux block on copies of its residual streams, saving copies of what shares their
    storage: it adds residuals in place (``img +=``, ``txt +=``, ``x +=``), which autograd and a
    checkpoint's saved inputs cannot survive."""

    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        args = tuple(a.clone() if torch.is_tensor(a) else a for a in args)
        kwargs = {k: v.clone() if k in ("img", "txt", "x") and torch.is_tensor(v) else v for k, v in kwargs.items()}
        streams = [a for a in args if torch.is_tensor(a)] + [kwargs[k] for k in ("img", "txt", "x") if k in kwargs]
        shared = {t.data_ptr() for t in streams}
        with torch.autograd.graph.saved_tensors_hooks(
            lambda t: t.clone() if t.data_ptr() in shared else t, lambda t: t
        ):
            return forward(*args, **kwargs)

    return run


@contextmanager
def differentiable_dit_blocks(unet: nn.Module) -> Iterator[None]:
    """Let autograd pass through Flux's blocks while open (SD3's add out of place). Relies on:
    ``comfy.ldm.flux.layers.DoubleStreamBlock`` / ``SingleStreamBlock`` changing only those inputs."""
    from comfy.ldm.flux.layers import DoubleStreamBlock, SingleStreamBlock

    blocks = [m for m in unet.modules() if isinstance(m, (DoubleStreamBlock, SingleStreamBlock))]
    for block in blocks:
        block.forward = _residual_safe(block.forward)
    try:
        yield
    finally:
        for block in blocks:
            block.__dict__.pop("forward", None)


def joint_attention_patch(on_attention, existing=None, before=None):
    """A ``patches_replace["dit"]`` block function running the block (through ``existing``, another
    pack's replacement, if any) with an ``optimized_attention_override`` that hands the joint
    attention's image queries (B, H, N, d) and text keys (B, H, T, d) as the kernel gets them
    (normed; rotated in Flux) to ``on_attention``; the attention stays ComfyUI's own.

    Relies on: both models calling ``replace(args, {"original_block": fn})`` with ``args["txt"]``,
    ``["img"]``, ``["transformer_options"]``, handing those options to ``optimized_attention``,
    which calls ``options["optimized_attention_override"](func, q, k, v, heads, ...,
    skip_reshape=)``, over ``[text, image]``; SD3.5's image-only attention is passed through.
    ``before(options)`` first sees each call's options (the sampler's ``cond_or_uncond`` is there)."""

    def block(args, extra):
        n_text, n_joint = args["txt"].shape[1], args["txt"].shape[1] + args["img"].shape[1]
        options = dict(args.get("transformer_options") or {})
        if before is not None:
            before(options)
        previous = options.get("optimized_attention_override")

        def override(func, *call, **kwargs):
            q, k = call[0], call[1]
            if not kwargs.get("skip_reshape", False):  # (B, L, H*d) -> (B, H, L, d)
                heads = call[3] if len(call) > 3 else kwargs["heads"]
                q, k = (x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2) for x in (q, k))
            if k.shape[2] == n_joint:
                on_attention(q[:, :, n_text:], k[:, :, :n_text])
            return previous(func, *call, **kwargs) if previous is not None else func(*call, **kwargs)

        options["optimized_attention_override"] = override
        args = dict(args, transformer_options=options)
        return existing(args, extra) if existing is not None else extra["original_block"](args)

    return block


@contextmanager
def comfy_training_mode() -> Iterator[None]:
    """ComfyUI's own training switch (its TrainLoraNode's): kernels without a backward (0.33's
    fused rotary embedding) fall back to differentiable ones. Relies on:
    ``comfy.model_management.in_training`` (0.33.0 on; 0.3.64 reads none, so setting it is inert)."""
    import comfy.model_management as mm

    before, mm.in_training = getattr(mm, "in_training", False), True
    try:
        yield
    finally:
        mm.in_training = before


def t5_tokens(tokens: dict) -> list | None:
    """T5's token list in a CLIP token dict (None without T5). Relies on: its key ``"t5xxl"``."""
    return tokens.get("t5xxl")


def t5_special_ids(clip) -> tuple[int, int]:
    """(pad id, end id) of a CLIP's T5. Relies on: ``clip.tokenizer.t5xxl.pad_token`` / ``.end_token``."""
    return int(clip.tokenizer.t5xxl.pad_token), int(clip.tokenizer.t5xxl.end_token)


def t5_context_start(context: torch.Tensor, tokens: dict) -> int:
    """Where T5's rows start in an encoded context. Relies on: ``FluxClipModel`` returning T5's
    output alone, ``SD3ClipModel`` putting it after [CLIP-L | CLIP-G], one row per T5 token."""
    return int(context.shape[1]) - sum(len(chunk) for chunk in t5_tokens(tokens))
