"""Identifier tokens in ComfyUI prompts, through the CLIP object's public tokenizer only.

A learned token (``<doll1>``) is not in CLIP's vocabulary, and ComfyUI has no public call that
puts an in-memory vector into a prompt. Its token lists, though, are public data: the CLIP
object's ``tokenize`` returns ``{key: [[(token, weight, ...), ...], ...]}`` per text encoder,
``encode_from_tokens`` takes it back, and an entry whose token is a tensor is used as that
position's input embedding (how ``embedding:NAME`` files work). So each identifier in the
prompt is written as a *placeholder* word that is one vocabulary piece in every encoder; the
prompt is tokenised as usual (weights, chunking, tokenizer options all ComfyUI's own); and
every entry holding the placeholder's id gets the token's vector instead. The result is the
same token list a stock ``embedding:NAME`` file gives, and positions come for free.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import torch

from ..textloc_core.data.tokens import check_token_text
from .comfy_internals import CLIP_KEYS, t5_tokens, text_encoder_tables

Tokens = dict  # {key: [[(token, weight[, word_id]), ...] per 77-token chunk]}
Tokenize = Callable[[str], Tokens]

# Rare words that are a single piece of CLIP's BPE vocabulary. A placeholder is only used
# when it is one piece in every encoder and the tokenised prompt holds it exactly as often
# as it was written, so a prompt that happens to contain one just takes the next.
PLACEHOLDERS = ("sks", "ohwx", "zwx", "tok", "qwe", "xyz", "zzz", "jjj", "qqq", "vvv", "kkk", "www")


def identifier_pattern(tokens: Iterable[str]) -> re.Pattern:
    """Whole-word matches of ``tokens`` (optionally written ``embedding:TOKEN``), longest first.

    Whole words only: a plain-word token like "sks" must not fire inside "asks", and '<a1>'
    must never eat part of '<a10>'.
    """
    ordered = sorted(set(tokens), key=len, reverse=True)
    return re.compile(r"(?:embedding:)?(?<![\w<>-])(" + "|".join(re.escape(t) for t in ordered) + r")(?![\w<>-])")


def _comparable(token):
    """A token id as an int; a tensor entry (an identifier an applied adapter already placed)
    as a marker that equals only itself."""
    return ("tensor", id(token)) if torch.is_tensor(token) else int(token)


def _first_chunk_ids(tokens: Tokens, key: str) -> list:
    return [entry[0] for entry in tokens[key][0]]


class IdentifierPlacer:
    """Tokenises prompts with identifier tokens as tensors, for one CLIP's tokenizer.

    ``dims`` maps each encoder's token key to its embedding width, in the order an identifier's
    vector holds them (``CLIP_KEYS``).
    """

    def __init__(self, tokenize: Tokenize, dims: dict[str, int]):
        self._tokenize = tokenize
        self.dims = {k: dims[k] for k in CLIP_KEYS if k in dims}
        self.total_dim = sum(self.dims.values())
        self._empty: Tokens | None = None
        self._placeholder_ids: dict[str, dict[str, int]] | None = None

    @classmethod
    def for_clip(cls, clip, tokenize: Tokenize | None = None) -> IdentifierPlacer:
        tables = text_encoder_tables(clip)
        return cls(tokenize or clip.tokenize, {k: int(t.shape[1]) for k, t in tables.items()})

    # -- vocabulary, read off tokenised text
    def pieces(self, word: str) -> dict[str, list[int]]:
        """The vocabulary ids ``word`` becomes in each encoder (start/end/padding removed).

        Found by comparing the tokens of ``word`` with those of the empty prompt: they share
        the start tokens, then ``word``'s pieces, then the empty prompt's tail.
        """
        if self._empty is None:
            self._empty = self._tokenize("")
        full = self._tokenize(word)
        out = {}
        for key in self.dims:
            a, b = _first_chunk_ids(full, key), _first_chunk_ids(self._empty, key)
            a, b = [_comparable(t) for t in a], [_comparable(t) for t in b]
            start = 0
            while start < min(len(a), len(b)) and a[start] == b[start]:
                start += 1
            tail_a, tail_b = a[start:], b[start:]
            count = next(k for k in range(len(tail_a) + 1) if tail_a[k:] == tail_b[: len(tail_a) - k])
            out[key] = tail_a[:count]
        return out

    def check_new_token(self, token: str, what: str = "token") -> None:
        """Refuse ``token`` as an identifier when it is unsafe text or already one vocabulary
        piece of an encoder: every prompt's ordinary use of that word would turn into the
        learned concept."""
        check_token_text(token, what)
        for key, pieces in self.pieces(token).items():
            if len(pieces) == 1:
                raise ValueError(
                    f"{what}: {token!r} already exists in the clip_{key} vocabulary; use a new made-up token "
                    "such as '<doll1>' so the concept gets its own embedding"
                )

    def _placeholders(self) -> dict[str, dict[str, int]]:
        if self._placeholder_ids is None:
            found = {}
            for word in PLACEHOLDERS:
                ids = self.pieces(word)
                if all(len(v) == 1 for v in ids.values()):
                    found[word] = {k: v[0] for k, v in ids.items()}
            self._placeholder_ids = found
        return self._placeholder_ids

    # -- prompts
    def tokenize(
        self, text: str, embeddings: dict[str, torch.Tensor], tokenize: Tokenize | None = None
    ) -> tuple[Tokens, dict[str, list[int]]]:
        """``text``'s token dict with every identifier token (a key of ``embeddings``) replaced
        by its (1, total_dim) vector, and each identifier's positions in the encoder output.

        ``tokenize`` overrides the tokenizer call (e.g. one that also returns word ids).
        """
        tokens, positions, _ = self.tokenize_placed(text, embeddings, tokenize)
        return tokens, positions

    def tokenize_placed(
        self, text: str, embeddings: dict[str, torch.Tensor], tokenize: Tokenize | None = None
    ) -> tuple[Tokens, dict[str, list[int]], dict[str, str]]:
        """``tokenize``, plus the placeholder word each identifier was written as (encoders
        without a tensor entry, such as T5, still hold that word's pieces there)."""
        tokenize = tokenize or self._tokenize
        present = sorted({m.group(1) for m in identifier_pattern(embeddings).finditer(text)}) if embeddings else []
        if not present:
            return tokenize(text), {}, {}
        for name in present:
            if embeddings[name].shape[0] != 1 or embeddings[name].shape[-1] != self.total_dim:
                raise ValueError(
                    f"token {name!r}: its embedding has shape {tuple(embeddings[name].shape)}, this text encoder "
                    f"takes one vector of {self.total_dim} values; was the adapter trained on another model family?"
                )
        candidates = list(self._placeholders().items())
        pattern = identifier_pattern(present)
        for first in range(len(candidates) - len(present) + 1):
            chosen = dict(zip(present, candidates[first : first + len(present)]))
            written = {name: 0 for name in present}

            def swap(match: re.Match) -> str:
                written[match.group(1)] += 1
                return f" {chosen[match.group(1)][0]} "

            tokens = tokenize(pattern.sub(swap, text))
            placed = self._place(tokens, {n: (chosen[n][1], embeddings[n]) for n in present})
            if all(len(placed.get(n, [])) == written[n] for n in present):
                return tokens, placed, {n: chosen[n][0] for n in present}
        raise ValueError(f"prompt: could not place the tokens {present} in {text!r}; rephrase the prompt")

    def _place(self, tokens: Tokens, wanted: dict[str, tuple[dict[str, int], torch.Tensor]]) -> dict[str, list[int]]:
        """Swap placeholder ids for vectors in place; return each identifier's flat positions."""
        positions: dict[str, list[int]] = {}
        by_id = {key: {ids[key]: (name, vec) for name, (ids, vec) in wanted.items()} for key in self.dims}
        first_key = next(iter(self.dims))
        start = 0
        for key, dim in self.dims.items():
            lookup = by_id[key]
            flat = 0
            for chunk in tokens[key]:
                for j, entry in enumerate(chunk):
                    hit = lookup.get(entry[0]) if not torch.is_tensor(entry[0]) else None
                    if hit is not None:
                        name, vec = hit
                        chunk[j] = (vec[0, start : start + dim],) + tuple(entry[1:])
                        if key == first_key:
                            positions.setdefault(name, []).append(flat + j)
                flat += len(chunk)
            start += dim
        return positions

    def word_positions(self, tokens: Tokens, word: str) -> list[int]:
        """Positions of every run of ``word``'s pieces in the first encoder's token list."""
        key = next(iter(self.dims))
        return run_positions([entry[0] for chunk in tokens[key] for entry in chunk], self.pieces(word)[key])


def run_positions(entries: list, pieces: list[int]) -> list[int]:
    """Every index of a flat token list covered by a run of ``pieces`` (tensor entries, placed
    vectors, match no id): where a word of the prompt sits, for the maps of plain words."""
    found = []
    for index in range(len(entries) - len(pieces) + 1) if pieces else ():
        window = entries[index : index + len(pieces)]
        if all(not torch.is_tensor(v) and int(v) == i for v, i in zip(window, pieces)):
            found.extend(range(index, index + len(pieces)))
    return found


def place_t5_runs(
    tokens: Tokens, pieces: dict[str, list[int]], pad_id: int, entry: Callable[[str], int]
) -> dict[str, list[int]]:
    """Replace each run of an identifier's T5 ``pieces`` in the T5 list of ``tokens`` by one entry,
    ``entry(name)`` (T5's ``pad_id``, or a pad id carrying the token's vector), padding each chunk
    back to its length with ``pad_id``; returns each identifier's flat T5 positions (none: []).
    Training places the token so, and so does Apply Adapter, so both see the same positions."""
    positions: dict[str, list[int]] = {name: [] for name in pieces}
    offset = 0
    for c, chunk in enumerate(t5_tokens(tokens)):
        ids = [None if torch.is_tensor(e[0]) else int(e[0]) for e in chunk]
        out, index = [], 0
        while index < len(chunk):
            hit = next((n for n, p in pieces.items() if p and ids[index : index + len(p)] == p), None)
            if hit is None:
                out.append(chunk[index])
                index += 1
                continue
            positions[hit].append(offset + len(out))
            out.append((entry(hit), *chunk[index][1:]))
            index += len(pieces[hit])
        t5_tokens(tokens)[c] = out + [(pad_id, *chunk[-1][1:])] * (len(chunk) - len(out))
        offset += len(chunk)
    return positions


class IdentifierTokenizer:
    """A ComfyUI CLIP tokenizer that also turns adapter tokens into their learned vectors.

    TextLoc Apply Adapter sets it as the ``tokenizer`` of a CLIP *clone* (``CLIP.tokenize``
    calls ``self.tokenizer.tokenize_with_weights``; ``CLIP.clone`` shares it downstream), so
    stock CLIPTextEncode nodes understand ``<doll1>``. Everything else is the wrapped
    tokenizer's. Stacking wraps the original tokenizer once, with all adapters' tokens.
    """

    def __init__(self, inner, placer_dims: dict[str, int], embeddings: dict[str, torch.Tensor], adapters: list):
        self.inner = inner
        self.embeddings = dict(embeddings)
        self.adapters = list(adapters)
        self.placer = IdentifierPlacer(lambda text: inner.tokenize_with_weights(text, False), placer_dims)

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False, **kwargs):
        tokens, _ = self.placer.tokenize(
            text, self.embeddings, lambda t: self.inner.tokenize_with_weights(t, return_word_ids, **kwargs)
        )
        return tokens

    def __getattr__(self, name):
        if name == "inner":  # not set yet (copy / unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


def with_identifiers(clip, embeddings: dict[str, torch.Tensor], adapter, kind=None, **options) -> object:
    """A clone of ``clip`` whose tokenizer also knows ``embeddings`` (stacked over earlier ones);
    ``kind`` (an ``IdentifierTokenizer`` class, ``options`` its extra arguments) places them."""
    current = clip.tokenizer
    inner = current.inner if isinstance(current, IdentifierTokenizer) else current
    known = dict(current.embeddings) if isinstance(current, IdentifierTokenizer) else {}
    adapters = list(current.adapters) if isinstance(current, IdentifierTokenizer) else []
    known.update(embeddings)
    dims = {k: int(t.shape[1]) for k, t in text_encoder_tables(clip).items()}
    new_clip = clip.clone()
    new_clip.tokenizer = (kind or IdentifierTokenizer)(inner, dims, known, adapters + [adapter], **options)
    return new_clip


def applied_identifiers(clip) -> tuple[dict[str, torch.Tensor], list]:
    """The identifier tokens and adapters TextLoc Apply Adapter put on ``clip`` (empty if none)."""
    tokenizer = clip.tokenizer
    if isinstance(tokenizer, IdentifierTokenizer):
        return dict(tokenizer.embeddings), list(tokenizer.adapters)
    return {}, []
