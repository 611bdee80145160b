"""Text for diffusion transformers whose text sequence includes T5: Flux (T5 only) and SD3
(CLIP-L and CLIP-G, then T5).

Backpropagating into a T5-XXL input embedding means backprop through 4.7 B parameters, so an
identifier token's T5 part is a trainable vector in T5's *output* space (docs/dit.md, "The
identifier token"): T5 runs without gradient on the prompt, with its pad id at the token's
positions, and the token's vector(s) replace its output there; the transformer's joint blocks
re-contextualise them. The CLIP parts are input embeddings, as in SD1.x / SDXL: Flux's CLIP-L
reaches the model only through its pooled vector (modulation), SD3's CLIP-L and CLIP-G also
through their positions in the context.

A concept trains one parameter, a row holding every encoder's slice (as SDXL's two CLIP
slices): ``[T5 | CLIP-L]`` for Flux, ``[CLIP-L | CLIP-G | T5]`` for SD3 (the order of each
pipeline's context).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..attention.cross_attention import TOKENS_PER_CHUNK
from ..data.tokens import check_token_text
from .base import EncodedPrompts, check_embedding_width, mean_of_pieces
from .diffusers_backend import DiffusersText, _Encoder


class T5Sequence:
    """One transformers T5 tokenizer + encoder giving a padded (B, max_length, width) sequence
    with identifier vectors placed in its output."""

    def __init__(self, tokenizer: Any, model: nn.Module, max_length: int):
        self.tokenizer = tokenizer
        self.model = model
        self.max_length = int(max_length)
        self.width = int(model.config.d_model)
        self.token_ids: dict[str, int] = {}

    def check_token(self, token: str) -> None:
        added = set(getattr(self.tokenizer, "added_tokens_encoder", {}))
        if token not in added and token in self.tokenizer.get_vocab():
            raise ValueError(
                f"token {token!r} is already a word of the T5 vocabulary; an identifier must be new, e.g. '<{token}1>'"
            )
        if token not in added:
            self.tokenizer.add_tokens([token])
        self.token_ids[token] = self.tokenizer.convert_tokens_to_ids(token)

    def pieces(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def layout(self, prompt: str, token_embeddings: dict[str, torch.Tensor]) -> tuple[list[int], dict[str, list[int]]]:
        """(padded ids with the pad id at identifier positions, {token: positions})."""
        for token in token_embeddings:
            if token not in self.token_ids:
                self.check_token(token)
        added = {i: t for t, i in self.token_ids.items() if t in token_embeddings}
        ids, where = [], {}
        for piece in self.pieces(prompt):
            token = added.get(piece)
            if token is None:
                ids.append(piece)
                continue
            for _ in range(token_embeddings[token].shape[0]):
                where.setdefault(token, []).append(len(ids))
                ids.append(self.tokenizer.pad_token_id)
        ids.append(self.tokenizer.eos_token_id)
        if len(ids) > self.max_length:
            raise ValueError(
                f"prompt {prompt!r} is {len(ids)} T5 tokens long; this model reads {self.max_length}. Shorten it."
            )
        return ids + [self.tokenizer.pad_token_id] * (self.max_length - len(ids)), where

    def encode(
        self, prompts: list[str], vectors: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, list[dict[str, list[int]]]]:
        """((B, max_length, width) sequence with ``vectors`` (slices of the token rows) at the
        identifier positions, differentiable w.r.t. them; the positions per prompt)."""
        laid = [self.layout(p, vectors) for p in prompts]
        device = next(self.model.parameters()).device
        with torch.no_grad():
            hidden = self.model(input_ids=torch.tensor([ids for ids, _ in laid], device=device)).last_hidden_state
        rows, columns, values = [], [], []
        for b, (_, where) in enumerate(laid):
            for token, positions in where.items():
                for i, position in enumerate(positions):  # each occurrence holds all n vectors in turn
                    rows.append(b)
                    columns.append(position)
                    values.append(vectors[token][i % vectors[token].shape[0]])
        if values:
            hidden = hidden.index_put(
                (torch.tensor(rows, device=device), torch.tensor(columns, device=device)),
                torch.stack(values).to(device, hidden.dtype),
            )
        return hidden, [where for _, where in laid]

    def initial_vector(self, word: str, what: str) -> torch.Tensor:
        """The mean of T5's outputs at ``word``'s pieces, the word encoded on its own (padded as
        prompts are, so a one-piece word's vector is its own output in that prompt)."""
        pieces = self.pieces(word)
        if not pieces:
            return mean_of_pieces([], word, what)
        hidden, _ = self.encode([word], {})
        return mean_of_pieces(list(hidden[0, : len(pieces)]), word, what)


class FluxText:
    """``TextBackend`` for Flux: the T5 sequence as context (token positions in it), CLIP-L's
    pooled output as the pooled vector."""

    def __init__(self, t5_tokenizer: Any, t5: nn.Module, clip_tokenizer: Any, clip: nn.Module, max_length: int = 512):
        self.t5_encoder = t5
        self.clip_encoder = clip
        self.t5 = T5Sequence(t5_tokenizer, t5, max_length)
        self.clip = _Encoder(clip_tokenizer, clip, None, int(clip.config.max_position_embeddings))
        self.embedding_dim = self.t5.width + self.clip.width
        self.encoder_sizes = [("t5", self.t5.width), ("clip_l", self.clip.width)]

    def initial_embedding(self, init_word: str, what: str = "init_word") -> torch.Tensor:
        clip_rows = [self.clip.embedding.weight[i] for i in self.clip.pieces(init_word)]
        parts = [self.t5.initial_vector(init_word, what), mean_of_pieces(clip_rows, init_word, what)]
        return torch.cat(parts).clone().unsqueeze(0)

    def check_token(self, token: str) -> None:
        check_token_text(token)
        if token != token.lower():
            raise ValueError(f"token {token!r}: CLIP lower-cases prompts; use a lower-case token, like '<doll1>'")
        self.t5.check_token(token)
        self.clip.check_token(token)

    def encode(self, prompts: list[str], token_embeddings: dict[str, torch.Tensor]) -> EncodedPrompts:
        encoders = f"this model's text encoders (T5 {self.t5.width} + CLIP-L {self.clip.width}) take"
        check_embedding_width(token_embeddings, self.embedding_dim, encoders)
        width = self.t5.width
        context, positions = self.t5.encode(prompts, {t: v[:, :width] for t, v in token_embeddings.items()})
        added = self.clip.added_ids(list(token_embeddings))
        laid = [self.clip.layout(p, added, token_embeddings) for p in prompts]
        clip_vectors = {t: v[:, width:] for t, v in token_embeddings.items()}
        _, pooled = self.clip.run([ids for ids, _, _ in laid], [f for _, _, f in laid], clip_vectors)
        return EncodedPrompts(context=context, token_positions=positions, pooled=pooled)


class SD3Text:
    """``TextBackend`` for SD3 / SD3.5: the context is ``[CLIP-L | CLIP-G]`` (77 positions,
    penultimate layers side by side, zero-padded to T5's width) followed by the T5 sequence,
    and the pooled vector is both CLIP models' pooled outputs side by side, as the SD3
    pipeline builds them. A token has positions in both parts; the map averages them all.

    An identifier's vector is one row ``[CLIP-L input | CLIP-G input | T5 output]``; the CLIP
    part is SDXL's two-encoder text (``DiffusersText``) with both pooled outputs."""

    def __init__(
        self,
        tokenizer: Any,
        text_encoder: nn.Module,
        tokenizer_2: Any,
        text_encoder_2: nn.Module,
        tokenizer_3: Any,
        text_encoder_3: nn.Module,
        max_length: int = 256,
    ):
        self.clip_l_encoder, self.clip_g_encoder, self.t5_encoder = text_encoder, text_encoder_2, text_encoder_3
        self.clip = DiffusersText(
            tokenizer, text_encoder, TOKENS_PER_CHUNK, tokenizer_2, text_encoder_2, pool_both=True
        )
        self.t5 = T5Sequence(tokenizer_3, text_encoder_3, max_length)
        if self.clip.embedding_dim > self.t5.width:
            raise ValueError(
                f"text: CLIP-L + CLIP-G are {self.clip.embedding_dim} wide, more than T5's {self.t5.width}; not an SD3 layout"
            )
        self.embedding_dim = self.clip.embedding_dim + self.t5.width
        self.encoder_sizes = [*self.clip.encoder_sizes, ("t5", self.t5.width)]

    def initial_embedding(self, init_word: str, what: str = "init_word") -> torch.Tensor:
        clip = self.clip.initial_embedding(init_word, what)[0]
        return torch.cat([clip, self.t5.initial_vector(init_word, what)]).unsqueeze(0)

    def check_token(self, token: str) -> None:
        self.clip.check_token(token)
        self.t5.check_token(token)

    def encode(self, prompts: list[str], token_embeddings: dict[str, torch.Tensor]) -> EncodedPrompts:
        widths = " + ".join(f"{name} {width}" for name, width in self.encoder_sizes)
        check_embedding_width(token_embeddings, self.embedding_dim, f"this model's text encoders ({widths}) take")
        width = self.clip.embedding_dim
        clip = self.clip.encode(prompts, {t: v[:, :width] for t, v in token_embeddings.items()})
        context = nn.functional.pad(clip.context, (0, self.t5.width - width))
        t5, t5_positions = self.t5.encode(prompts, {t: v[:, width:] for t, v in token_embeddings.items()})
        offset = context.shape[1]
        merged = [
            {t: clip_at.get(t, []) + [offset + p for p in t5_at.get(t, [])] for t in {*clip_at, *t5_at}}
            for clip_at, t5_at in zip(clip.token_positions, t5_positions)
        ]
        return EncodedPrompts(
            context=torch.cat([context, t5.to(context.dtype)], dim=1), token_positions=merged, pooled=clip.pooled
        )
