"""TextLoc Attention Preview's part for Flux.1 and SD3 / SD3.5: where the mapped words sit in the
model's context, and the denoiser whose block patches capture their maps while ComfyUI samples.

A Flux context is T5's output alone, so a word's positions are its T5 pieces; an SD3 context is
[CLIP-L | CLIP-G] then T5, so a word has CLIP positions and T5 positions, and its map averages
both (as in training). An adapter token Apply Adapter put on the CLIP is mapped the same way:
at its T5 positions and, on SD3, its CLIP positions. Flux dev is guidance-distilled: at CFG 1
ComfyUI samples the positive prompt only, so a negative prompt has no effect there (the log
says so).
"""

from __future__ import annotations

import logging

from ..textloc_core.attention.maps import slot_layout
from .comfy_dit_apply import DiTIdentifierTokenizer
from .comfy_dit_backend import ComfyDiTDenoiser
from .comfy_dit_text import ComfyDiTText
from .comfy_internals import t5_context_start, t5_tokens
from .comfy_tokens import applied_identifiers, run_positions

log = logging.getLogger("textloc")


def _identifier_positions(clip, prompt: str) -> tuple[dict, dict[str, list[int]], dict[str, list[int]]]:
    """(token_dict, CLIP positions, T5 positions) of each applied identifier in ``prompt``.
    ``clip.tokenize`` tokenises (ComfyUI's options kept); the tokenizer Apply Adapter put on the
    CLIP places the identifiers (``comfy_dit_apply``)."""
    tokenizer = clip.tokenizer
    if not applied_identifiers(clip)[0]:
        return clip.tokenize(prompt), {}, {}
    if not isinstance(tokenizer, DiTIdentifierTokenizer):
        raise ValueError(
            "clip: its TextLoc adapter tokens were applied for another model family; apply a Flux / SD3 adapter "
            "with TextLoc Apply Adapter to this model's own CLIP"
        )
    return tokenizer.placed(prompt, clip.tokenize)


def dit_mapped_tokens(model, clip, vae, prompt: str, negative: str, tokens: str, cfg: float, batch_size: int):
    """(token_dict, wanted, layout, denoiser) for a Flux / SD3 preview: the prompt's tokens, the
    adapter tokens and words to map (``tokens``, else every adapter token in the prompt) and their
    context positions per batch row, and the Flux / SD3 denoiser."""
    denoiser = ComfyDiTDenoiser(model, vae)
    text = ComfyDiTText(clip, denoiser.family)
    token_dict, clip_at, t5_at = _identifier_positions(clip, prompt)
    start = t5_context_start(clip.encode_from_tokens(token_dict), token_dict)
    # SD3's context begins with the CLIP part, so its tokens sit there too; Flux's is T5's alone
    positions = {
        name: (clip_at.get(name, []) if denoiser.family == "sd3" else []) + [start + p for p in at]
        for name, at in t5_at.items()
    }
    wanted = [t.strip() for t in tokens.split(",") if t.strip()] or list(positions)
    if not wanted:
        raise ValueError(
            "tokens: the prompt has no adapter token; name the words to map (e.g. 'doll, table') or use a token "
            "of an applied TextLoc adapter in the prompt"
        )
    entries = [entry[0] for chunk in t5_tokens(token_dict) for entry in chunk]
    for word in wanted:
        if word in positions:
            continue
        at = [start + p for p in run_positions(entries, text.t5_pieces(word))]
        if denoiser.family == "sd3":
            at = text.placer.word_positions(token_dict, word) + at
        if at:
            positions[word] = at
    missing = [t for t in wanted if t not in positions]
    if missing:
        raise ValueError(
            f"tokens: {missing} do not occur in the prompt {prompt!r}; write them in the prompt or remove them"
        )
    if denoiser.family == "flux" and cfg == 1.0 and negative.strip():
        log.warning("textloc: Flux at CFG 1 samples the positive prompt only; the negative prompt has no effect")
    return token_dict, wanted, slot_layout([positions] * batch_size, wanted), denoiser
