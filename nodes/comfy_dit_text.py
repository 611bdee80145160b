"""Identifier tokens in the text of ComfyUI's Flux.1 and SD3 / SD3.5 CLIP objects.

The token's vector is laid out as the diffusers backend lays it (``backends.t5_text``), so
adapters move between the backends: ``[T5 | CLIP-L]`` for Flux, ``[CLIP-L | CLIP-G | T5]`` for
SD3. Its CLIP slices are input embeddings, placed as tensors in the CLIP token lists
(``comfy_tokens.IdentifierPlacer``); its T5 slice is a vector in T5's *output* space
(docs/dit.md, "The identifier token"): the placeholder word's T5 pieces become one pad entry,
T5 runs as usual, and its output row there is overwritten with the vector. Flux's context is
T5's output alone (CLIP-L reaches the model only through the pooled vector); SD3's is the CLIP
part followed by T5's, so an SD3 token has positions in both, and the map averages them.
"""

from __future__ import annotations

import torch

from ..textloc_core.backends.base import EncodedPrompts, check_embedding_width, mean_of_pieces
from .comfy_cancel import cancel_as_core
from .comfy_internals import (
    clip_text_transformer,
    differentiable_text_encoder,
    t5_context_start,
    t5_special_ids,
    t5_tokens,
    text_encoder,
    text_encoder_tables,
)
from .comfy_tokens import IdentifierPlacer, identifier_pattern, place_t5_runs


class ComfyDiTText:
    """``TextBackend`` over a ComfyUI Flux (CLIP-L + T5) or SD3 (CLIP-L + CLIP-G + T5) CLIP."""

    def __init__(self, clip, family: str):
        self.clip = clip
        self.family = family
        self.tables = text_encoder_tables(clip)
        self.placer = IdentifierPlacer.for_clip(clip)
        empty = self.clip.tokenize("")
        if t5_tokens(empty) is None:
            raise ValueError(
                f"clip: this text encoder has no T5, which {family} training needs; load the model's own: "
                "DualCLIPLoader (Flux: clip_l + t5xxl) or TripleCLIPLoader (SD3: clip_l, clip_g, t5xxl)"
            )
        self.pad_id, self.end_id = t5_special_ids(clip)
        with torch.no_grad():
            self.t5_width = int(self.clip.encode_from_tokens(empty).shape[-1])
        self.clip_width = self.placer.total_dim
        self.embedding_dim = self.clip_width + self.t5_width
        clip_sizes = [(f"clip_{key}", dim) for key, dim in self.placer.dims.items()]
        t5_first = family == "flux"
        self.encoder_sizes = [("t5", self.t5_width), *clip_sizes] if t5_first else [*clip_sizes, ("t5", self.t5_width)]
        self._t5_at = slice(0, self.t5_width) if t5_first else slice(self.clip_width, None)
        self._clip_at = slice(self.t5_width, None) if t5_first else slice(0, self.clip_width)

    # -- modules the session prepares
    def clip_encoders(self) -> list[torch.nn.Module]:
        """The CLIP transformers (gradients reach the token through them; T5 needs none)."""
        return [clip_text_transformer(self.clip, key) for key in self.tables]

    def differentiable(self):
        return differentiable_text_encoder(text_encoder(self.clip))

    # -- vocabulary
    def t5_pieces(self, word: str) -> list[int]:
        """The T5 ids ``word`` becomes (ComfyUI's tokenizer, end and padding removed)."""
        entries = [e[0] for chunk in t5_tokens(self.clip.tokenize(word)) for e in chunk]
        return [int(i) for i in entries[: entries.index(self.end_id)]] if self.end_id in entries else []

    def initial_embedding(self, init_word: str, what: str = "init_word") -> torch.Tensor:
        clip_parts = [
            mean_of_pieces([self.tables[key][p] for p in pieces], init_word, what)
            for key, pieces in self.placer.pieces(init_word).items()
        ]
        n_pieces = len(self.t5_pieces(init_word))
        tokens = self.clip.tokenize(init_word)
        with torch.no_grad(), cancel_as_core("text encoding"):
            context = self.clip.encode_from_tokens(tokens)
        start = t5_context_start(context, tokens)
        t5 = mean_of_pieces(list(context[0, start : start + n_pieces]), init_word, what)
        parts = [t5, *clip_parts] if self.family == "flux" else [*clip_parts, t5]
        with torch.inference_mode(False):
            return torch.cat(parts).unsqueeze(0).clone()

    def check_token(self, token: str) -> None:
        self.placer.check_new_token(token)

    # -- encoding
    def _place_t5(self, tokens: dict, words: dict[str, str]) -> dict[str, list[int]]:
        """Each placeholder word's T5 pieces -> one pad entry; every identifier's T5 positions."""
        pieces = {name: self.t5_pieces(word) for name, word in words.items()}
        return place_t5_runs(tokens, pieces, self.pad_id, lambda _name: self.pad_id)

    def _encode_one(self, prompt: str, token_embeddings: dict[str, torch.Tensor]):
        clip_vectors = {t: v[:, self._clip_at] for t, v in token_embeddings.items()}
        tokens, clip_positions, words = self.placer.tokenize_placed(prompt, clip_vectors)
        if words:  # T5 reads the placeholder as written, without the spaces CLIP's placing adds
            as_written = identifier_pattern(words).sub(lambda m: words[m.group(1)], prompt)
            t5_tokens(tokens)[:] = t5_tokens(self.clip.tokenize(as_written))
        t5_positions = self._place_t5(tokens, words)
        if any(len(t5_positions.get(t, [])) != len(at) for t, at in clip_positions.items()):
            raise ValueError(f"prompt: could not place the tokens {sorted(words)} in T5's tokens of {prompt!r}")
        with cancel_as_core("text encoding"):
            context, pooled = self.clip.encode_from_tokens(tokens, return_pooled=True)
        start = t5_context_start(context, tokens)
        rows = [(start + p, token_embeddings[t][0, self._t5_at]) for t, at in t5_positions.items() for p in at]
        if rows:
            index = torch.tensor([r for r, _ in rows], device=context.device)
            values = torch.stack([v for _, v in rows]).to(context.device, context.dtype)
            context = context.index_put((torch.zeros_like(index), index), values)
        where = {t: [start + p for p in at] for t, at in t5_positions.items()}
        if self.family == "sd3":  # the CLIP part is in the context too
            where = {t: clip_positions[t] + at for t, at in where.items()}
        return context, pooled, where

    def encode(self, prompts: list[str], token_embeddings: dict[str, torch.Tensor]) -> EncodedPrompts:
        widths = " + ".join(f"{name} {width}" for name, width in self.encoder_sizes)
        check_embedding_width(token_embeddings, self.embedding_dim, f"this model's text encoders ({widths}) take")
        encoded = [self._encode_one(p, token_embeddings) for p in prompts]
        if len({c.shape[1] for c, _, _ in encoded}) > 1:
            raise ValueError("prompts: prompts of different token counts cannot be batched; shorten the long prompt")
        return EncodedPrompts(
            context=torch.cat([c for c, _, _ in encoded]),
            token_positions=[w for _, _, w in encoded],
            pooled=torch.cat([p for _, p, _ in encoded]),
        )
