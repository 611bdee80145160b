"""ComfyUI's text encoders where no public call reaches: the CLIP encoders' embedding tables
and transformers, gradients through their layers, and T5's token list and where its rows sit
in an encoded Flux / SD3 context."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = [
    "CLIP_KEYS",
    "clip_text_transformer",
    "differentiable_text_encoder",
    "t5_context_start",
    "t5_special_ids",
    "t5_tokens",
    "text_encoder",
    "text_encoder_tables",
]


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


def text_encoder(clip) -> nn.Module:
    """A CLIP's text-encoder module. Relies on: ``comfy.sd.CLIP.cond_stage_model``."""
    return clip.cond_stage_model


def clip_text_transformer(clip, key: str = "l") -> nn.Module:
    """The transformers model of a CLIP's ``clip_<key>`` encoder (weights are loaded into it).
    Relies on: ``cond_stage_model.clip_<key>.transformer`` (``SD1ClipModel`` names it so)."""
    return getattr(text_encoder(clip), f"clip_{key}").transformer


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
