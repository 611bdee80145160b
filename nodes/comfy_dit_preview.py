"""TextLoc Attention Preview's part for Flux.1 and SD3 / SD3.5: where the mapped words sit in the
model's context, and the denoiser whose block patches capture their maps while ComfyUI samples.

A Flux context is T5's output alone, so a word's positions are its T5 pieces; an SD3 context is
[CLIP-L | CLIP-G] then T5, so a word has CLIP positions and T5 positions, and its map averages
both (as in training). Flux dev is guidance-distilled: at CFG 1 ComfyUI samples the positive
prompt only, so a negative prompt has no effect there (the log says so).
"""

from __future__ import annotations

import logging

from ..textloc_core.attention.maps import slot_layout
from .comfy_dit_backend import ComfyDiTDenoiser
from .comfy_dit_text import ComfyDiTText
from .comfy_internals import t5_context_start, t5_tokens
from .comfy_tokens import applied_identifiers

log = logging.getLogger("textloc")


def _runs(ids: list[int], pieces: list[int]) -> list[int]:
    """Every index covered by a run of ``pieces`` in ``ids``."""
    found = []
    for start in range(len(ids) - len(pieces) + 1) if pieces else ():
        if ids[start : start + len(pieces)] == pieces:
            found.extend(range(start, start + len(pieces)))
    return found


def dit_mapped_tokens(model, clip, vae, prompt: str, negative: str, tokens: str, cfg: float, batch_size: int):
    """(token_dict, wanted, layout, denoiser) for a Flux / SD3 preview: the prompt's tokens, the
    words to map and their context positions per batch row, and the Flux / SD3 denoiser."""
    denoiser = ComfyDiTDenoiser(model, vae)
    wanted = [t.strip() for t in tokens.split(",") if t.strip()]
    if applied_identifiers(clip)[0]:
        raise ValueError(
            "clip: TextLoc adapter tokens are not mapped on Flux / SD3 models yet; name plain words of the prompt "
            "in tokens, with a CLIP that has no adapter applied"
        )
    if not wanted:
        raise ValueError("tokens: name the words of the prompt to map (e.g. 'doll, table')")
    text = ComfyDiTText(clip, denoiser.family)
    token_dict = clip.tokenize(prompt)
    start = t5_context_start(clip.encode_from_tokens(token_dict), token_dict)
    ids = [int(entry[0]) for chunk in t5_tokens(token_dict) for entry in chunk]
    positions = {}
    for word in wanted:
        at = [start + p for p in _runs(ids, text.t5_pieces(word))]
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
