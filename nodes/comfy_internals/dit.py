"""Diffusion transformers (Flux.1, SD3 / SD3.5) in ComfyUI: their joint blocks and fused text
``qkv``, the model's own noise schedule, a direct call, gradients through Flux's blocks, and the
``dit`` block patch that captures the joint attention's image-to-text logits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .model import ModelParts, transformer_options

__all__ = [
    "DIT_BLOCKS",
    "differentiable_dit_blocks",
    "dit_block_replacements",
    "dit_forward",
    "dit_layout",
    "joint_attention_patch",
    "model_sampling",
]


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
