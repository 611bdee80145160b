"""Apply Adapter on Flux.1 and SD3 / SD3.5: the MODEL's K/V as rows of its fused text ``qkv``, and
the whole token on the CLIP, T5 part included.

MODEL: ComfyUI keeps a block's text Q, K and V as one fused ``qkv`` weight; its K and V rows are
the canonical ``double_blocks.i.txt_attn.to_k`` / ``joint_blocks.i.context_block.attn.to_v``
weights the diffusers backend keys the same way (``formats.text_kv_from_fused``), so both
backends fingerprint the same values (``comfy_backend.base_fingerprint_and_weights``).

CLIP:
An identifier's vector is laid out as both backends train it: ``[T5 | CLIP-L]`` for Flux,
``[CLIP-L | CLIP-G | T5]`` for SD3 (``textloc_core.backends.t5_text``). Its CLIP slices are
input embeddings, placed as tensors in the CLIP token lists as for SD1.x / SDXL
(``comfy_tokens``). Its T5 slice is a vector in T5's output space: the placeholder word's T5
pieces become one pad entry (as in training, where T5 reads its pad id there), T5 runs as
usual, and its output row there is overwritten with the vector
(``comfy_internals.with_t5_rows``). The pad entry is a ``T5Vector``, an int that carries the
vector from the tokenizer to the encoder; ``DiTIdentifierTokenizer.placed`` also says where
each token went, which Attention Preview maps.
"""

from __future__ import annotations

import torch

from .comfy_internals import t5_special_ids, t5_tokens, with_t5_rows
from .comfy_tokens import IdentifierPlacer, IdentifierTokenizer, place_t5_runs, with_identifiers

FAMILIES = {"double_blocks": "flux", "joint_blocks": "sd3"}
T5_KEY = "t5xxl"
"""T5's key in a Flux / SD3 token dict (``comfy_internals.t5_tokens`` reads it), for ``pieces``."""
"""The first name of a diffusion transformer's K/V keys -> its family."""


def dit_family(kv_keys) -> str | None:
    """The family of a MODEL whose canonical K/V keys are a diffusion transformer's ("flux" or
    "sd3"), else None."""
    prefixes = {key.split(".", 1)[0] for key in kv_keys}
    return FAMILIES.get(prefixes.pop()) if len(prefixes) == 1 else None


class T5Vector(int):
    """T5's pad id at an identifier's T5 position, carrying the token's T5 output vector."""

    vector: torch.Tensor

    def __new__(cls, pad_id: int, vector: torch.Tensor):
        entry = super().__new__(cls, pad_id)
        entry.vector = vector
        return entry


class DiTIdentifierTokenizer(IdentifierTokenizer):
    """An ``IdentifierTokenizer`` for a Flux / SD3 CLIP: CLIP slices as tensors in the CLIP lists,
    the T5 slice as a ``T5Vector`` in T5's list. ``t5_first``: the vector is ``[T5 | CLIP]`` (Flux)."""

    def __init__(self, inner, placer_dims, embeddings, adapters, t5_first: bool = False, pad_id: int = 0):
        super().__init__(inner, placer_dims, embeddings, adapters)
        self.t5_first = t5_first
        self.pad_id = int(pad_id)
        self.t5 = IdentifierPlacer(lambda text: inner.tokenize_with_weights(text, False), {})
        self.t5.dims = {T5_KEY: 0}  # its vocabulary reading (``pieces``) for T5's token list

    def _parts(self, vector: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(CLIP slices, T5 slice) of a (1, D) token vector."""
        clip = self.placer.total_dim
        return (vector[:, -clip:], vector[:, :-clip]) if self.t5_first else (vector[:, :clip], vector[:, clip:])

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False, **kwargs):
        return self.placed(text, lambda t: self.inner.tokenize_with_weights(t, return_word_ids, **kwargs))[0]

    def placed(self, text: str, tokenize) -> tuple[dict, dict[str, list[int]], dict[str, list[int]]]:
        """(token dict, CLIP positions, T5 positions) of ``text`` tokenised by ``tokenize`` with
        every identifier placed: per identifier, its flat positions in the first CLIP list and
        in T5's list (what Attention Preview maps)."""
        clip = {name: self._parts(vector)[0] for name, vector in self.embeddings.items()}
        tokens, placed, words = self.placer.tokenize_placed(text, clip, tokenize)
        pieces = {name: self.t5.pieces(word)[T5_KEY] for name, word in words.items()}
        t5_slices = {name: self._parts(self.embeddings[name])[1][0] for name in words}
        t5_at = place_t5_runs(tokens, pieces, self.pad_id, lambda name: T5Vector(self.pad_id, t5_slices[name]))
        for name in words:
            if len(t5_at[name]) != len(placed.get(name, [])):
                raise ValueError(f"prompt: could not place the token {name!r} in T5's tokens of {text!r}; rephrase it")
        return tokens, placed, t5_at


def t5_rows(tokens: dict) -> list[tuple[int, torch.Tensor]]:
    """The ``T5Vector`` entries of a token dict's T5 list: (flat position, vector)."""
    entries = [entry[0] for chunk in t5_tokens(tokens) or [] for entry in chunk]
    return [(i, e.vector) for i, e in enumerate(entries) if isinstance(e, T5Vector)]


def with_dit_identifiers(clip, embeddings: dict[str, torch.Tensor], adapter, family: str):
    """A clone of a Flux / SD3 ``clip`` that turns ``embeddings``' tokens into their whole vectors."""
    options = {"t5_first": family == "flux", "pad_id": t5_special_ids(clip)[0]}
    tokenized = with_identifiers(clip, embeddings, adapter, DiTIdentifierTokenizer, **options)
    return with_t5_rows(tokenized, t5_rows)
