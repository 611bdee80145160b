"""From captured attention probabilities to one token map per concept.

The ``AttentionRouter`` keeps, per routed attn2 call, (B, N, T) probabilities of N query
pixels to T tracked context slots. This module decides which slots to track
(``slot_layout``: every position of every concept token in each prompt) and turns the
captured probabilities into (B, K, h, w) maps, one per concept, the way the paper does:
average the token's positions, average over the layers of one resolution, upsample each
resolution to a common grid (bilinear), min-max normalise per sample, average resolutions.
"""

from __future__ import annotations

import math
import weakref
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .cross_attention import AttentionRouter, CapturedMap


@dataclass
class SlotLayout:
    """Which context positions the router tracks and how they fold into concepts.

    ``slots`` (B, T) long: context index per tracked slot (unused slots point at 0, SOT).
    ``weights`` (B, T, K): slot -> concept averaging weights (1/count of the token's positions).
    ``present`` (B, K) bool: the concept's token occurs in that row's prompt.
    ``tokens``: the K identifier tokens, in concept order.
    """

    slots: torch.Tensor
    weights: torch.Tensor
    present: torch.Tensor
    tokens: list[str]


def slot_layout(token_positions: list[dict[str, list[int]]], tokens: list[str]) -> SlotLayout:
    """Track every position of every token in ``tokens`` for each prompt's positions dict."""
    rows = [
        [(k, p) for k, token in enumerate(tokens) for p in positions.get(token, [])] for positions in token_positions
    ]
    width = max([len(r) for r in rows] + [1])
    batch, n_concepts = len(rows), len(tokens)
    slots = torch.zeros(batch, width, dtype=torch.long)
    weights = torch.zeros(batch, width, n_concepts)
    present = torch.zeros(batch, n_concepts, dtype=torch.bool)
    for b, row in enumerate(rows):
        counts = defaultdict(int)
        for k, _ in row:
            counts[k] += 1
        for t, (k, position) in enumerate(row):
            slots[b, t] = position
            weights[b, t, k] = 1.0 / counts[k]
            present[b, k] = True
    return SlotLayout(slots, weights, present, list(tokens))


_QUERY_COUNTS: weakref.WeakKeyDictionary[object, dict[tuple[int, ...], dict[str, int]]] = weakref.WeakKeyDictionary()
"""Per denoiser, per latent size: the counts ``attn2_query_counts`` measured (adapters change no shape)."""


def attn2_query_counts(denoiser, latents: torch.Tensor, encoded, dtype: torch.dtype) -> dict[str, int]:
    """Query pixels of every attn2 layer (canonical name) for latents of this size: one
    routed forward without gradient, so levels are found by walking, never hard-coded.
    ``encoded``: the text backend's ``EncodedPrompts`` (its first row is used). The forward
    runs once per denoiser and latent size; later calls (each generation with maps) reuse it."""
    per_size = _QUERY_COUNTS.setdefault(denoiser, {})
    size = tuple(latents.shape[-2:])
    if size not in per_size:
        per_size[size] = _measure_query_counts(denoiser, latents, encoded, dtype)
    return dict(per_size[size])


def _measure_query_counts(denoiser, latents: torch.Tensor, encoded, dtype: torch.dtype) -> dict[str, int]:
    """The routed forward behind ``attn2_query_counts``."""
    router = AttentionRouter(layers=None, token_slots=torch.zeros(1, 1, dtype=torch.long), keep_grad=False)
    pooled = None if encoded.pooled is None else encoded.pooled[:1]
    with torch.no_grad(), denoiser.route_attention(router):
        t = torch.zeros(1, dtype=torch.long, device=latents.device)
        denoiser.predict(latents[:1].to(dtype), t, encoded.context[:1].to(dtype), pooled)
    return {m.layer: m.probs.shape[1] for m in router.captured}


def layer_factors(query_counts: dict[str, int]) -> dict[str, int]:
    """Downsampling factor of each layer relative to the finest attn2 resolution (1, 2, 4...)."""
    finest = max(query_counts.values())
    return {layer: max(1, round(math.sqrt(finest / n))) for layer, n in query_counts.items()}


KEEP_ALL_LEVELS_UP_TO = 2
"""``"all_but_finest"`` keeps every attention resolution of a model with at most this many (SDXL)."""


NAMED_MAP_LEVELS = ("all_but_finest", "all")
"""The named choices of ``map_levels`` (a tuple of factors is the third kind): the paper's, and all.
The Attention Preview's ``levels`` widget offers these."""
DEFAULT_MAP_LEVELS = NAMED_MAP_LEVELS[0]
"""The paper's choice, the default of training (``TrainConfig.map_levels``) and the preview."""


def choose_layers(query_counts: dict[str, int], map_levels: tuple[int, ...] | str) -> set[str]:
    """The layers whose maps form the token map, for ``TrainConfig.map_levels``.

    ``"all_but_finest"`` is the paper's choice for SD1.5, whose attn2 layers sit at four
    resolutions (the 64, 32, 16 and 8 grids at 512 px): it drops the finest and keeps three.
    A model with at most ``KEEP_ALL_LEVELS_UP_TO`` resolutions keeps them all instead: SDXL has
    two (the 64 and 32 grids at 1024 px), and dropping one would guide a single 1/32-of-the-side
    grid; on a tiny SDXL-architecture model guiding both localised better in 5 of 5 seeds
    (docs/sdxl.md, ``scripts/sdxl_map_levels.py``). A diffusion transformer's blocks all work at
    one resolution: there ``"all_but_finest"`` keeps the second half of the blocks
    (``ONE_RESOLUTION_DEFAULT``), ``"all"`` every block, and ``"blocks:..."`` picks blocks by
    depth (``choose_blocks``).
    """
    if isinstance(map_levels, str) and map_levels.startswith(BLOCKS_PREFIX):
        return choose_blocks(list(query_counts), map_levels)
    factors = layer_factors(query_counts)
    available = sorted(set(factors.values()))
    if map_levels == "all_but_finest" and len(available) == 1 and len(factors) > 1:
        return choose_blocks(list(query_counts), ONE_RESOLUTION_DEFAULT)
    if map_levels == "all":
        wanted = set(available)
    elif map_levels == "all_but_finest":
        wanted = set(available[1:]) if len(available) > KEEP_ALL_LEVELS_UP_TO else set(available)
    elif isinstance(map_levels, str):
        named = ", ".join(repr(n) for n in NAMED_MAP_LEVELS)
        raise ValueError(
            f"map_levels: {map_levels!r} must be one of {named}, a tuple of factors like (2, 4, 8), "
            "or for a transformer's blocks 'blocks:first_half' / 'blocks:0,2-4'"
        )
    else:
        wanted = {int(f) for f in map_levels}
        missing = wanted - set(available)
        if missing:
            raise ValueError(
                f"map_levels: factors {sorted(missing)} have no attn2 layer in this model; available "
                f"factors (relative to the finest attention resolution) are {available}"
            )
    return {layer for layer, factor in factors.items() if factor in wanted}


BLOCKS_PREFIX = "blocks:"
"""``map_levels`` naming blocks by depth (a diffusion transformer's blocks share one resolution)."""
BLOCK_HALVES = ("first_half", "second_half")
ONE_RESOLUTION_DEFAULT = "blocks:second_half"
"""What ``"all_but_finest"`` keeps of a model whose attention layers share one resolution (a
diffusion transformer's blocks): on tiny Flux- and SD3.5-architecture models, guiding the
second half localised better than guiding every block in 8 of 10 seeds, and every block did
no better than no guidance (docs/dit.md, ``scripts/dit_map_blocks.py``)."""


def choose_blocks(layers: list[str], spec: str) -> set[str]:
    """The layers of ``layers`` (in forward order) that ``spec`` names: ``"blocks:first_half"``
    / ``"blocks:second_half"`` (the middle block of an odd count goes with the first half), or
    0-based positions and ranges, ``"blocks:0,2-4"``."""
    body = spec[len(BLOCKS_PREFIX) :].strip()
    middle = (len(layers) + 1) // 2
    if body in BLOCK_HALVES:
        return set(layers[:middle] if body == "first_half" else layers[middle:])
    picked = set()
    try:
        for part in body.split(","):
            low, _, high = part.partition("-")
            picked.update(range(int(low), int(high or low) + 1))
    except ValueError:
        raise ValueError(
            f"map_levels: {spec!r} must be 'blocks:first_half', 'blocks:second_half' or block positions like 'blocks:0,2-4'"
        ) from None
    outside = sorted(i for i in picked if not 0 <= i < len(layers))
    if outside or not picked:
        raise ValueError(
            f"map_levels: {spec!r} names blocks {outside or 'none'}; this model's are 0 to {len(layers) - 1}"
        )
    return {layers[i] for i in sorted(picked)}


def _grid(n_query: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of an attention layer with ``n_query`` pixels over a latent of ``latent_hw``."""
    lh, lw = latent_hw
    scale = math.sqrt(lh * lw / n_query)
    h, w = max(1, round(lh / scale)), max(1, round(lw / scale))
    if h * w != n_query:  # odd latent sizes round up inside the UNet's downsamplers
        h, w = math.ceil(lh / scale), math.ceil(lw / scale)
    if h * w != n_query:
        raise ValueError(f"attention layer with {n_query} pixels does not tile a {lh}x{lw} latent")
    return h, w


def normalize_maps(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Min-max each (h, w) map of a (..., h, w) batch to [0, 1], as the paper's code does; a
    constant map becomes 0 (nothing stands out, so nothing is drawn hot)."""
    low = maps.amin(dim=(-2, -1), keepdim=True)
    high = maps.amax(dim=(-2, -1), keepdim=True)
    return (maps - low) / (high - low).clamp_min(eps)


def token_maps(
    captured: list[CapturedMap],
    layout: SlotLayout,
    latent_hw: tuple[int, int],
    *,
    rows: slice | None = None,
    map_size: int | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    """Fold captured probabilities into (B, K, h, w) per-concept token maps.

    ``rows`` picks the batch rows to use (the trainer passes the instance rows, leaving out
    prior rows; an ``AveragingRouter`` has kept only the rows that count). ``map_size`` is the side of the
    common grid (None: the largest captured resolution); non-square latents keep their aspect.
    """
    if not captured:
        raise ValueError("token maps: nothing was captured; route at least one attn2 layer")
    rows = rows or slice(None)
    weights = layout.weights[rows].to(captured[0].probs.device)
    by_size: dict[int, list[torch.Tensor]] = defaultdict(list)
    for item in captured:
        by_size[item.probs.shape[1]].append(item.probs[rows])
    grids = {n: _grid(n, latent_hw) for n in by_size}
    if map_size is None:
        target = grids[max(grids)]
    else:
        lh, lw = latent_hw
        target = (max(1, round(map_size * lh / max(lh, lw))), max(1, round(map_size * lw / max(lh, lw))))
    levels = []
    for n, probs in by_size.items():
        mean_layers = torch.stack(probs).float().mean(dim=0)  # (B, N, T)
        per_concept = torch.einsum("bnt,btk->bkn", mean_layers, weights.float())
        h, w = grids[n]
        level = per_concept.reshape(*per_concept.shape[:2], h, w)
        if (h, w) != target:
            level = F.interpolate(level, size=target, mode="bilinear", align_corners=False)
        levels.append(normalize_maps(level, eps=1e-8) if normalize else level)
    return torch.stack(levels).mean(dim=0)
