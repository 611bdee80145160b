"""The red-square probe the map-level scripts share (sdxl_map_levels.py for SDXL's grids,
dit_map_blocks.py for a transformer's blocks): a concept the tiny random models can see, one
training choice measured on it, and the table that reports each choice over seeds."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from textloc_core.data.concepts import Concept, ConceptImage, ConceptSet
from textloc_core.evaluation.localization import attention_on_images
from textloc_core.evaluation.metrics import attention_iou
from textloc_core.training.config import TrainConfig
from textloc_core.training.loop import train
from textloc_core.training.result import make_adapter

SIDE, SQUARE = 32, 12
"""The probe photo's side and the red square's side, in pixels."""


def scene(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A noise photo with a red square at a random place, and the square's mask."""
    image = torch.rand(3, SIDE, SIDE, generator=generator) * 0.6
    top, left = (int(v) for v in torch.randint(0, SIDE - SQUARE + 1, (2,), generator=generator))
    mask = torch.zeros(SIDE, SIDE)
    mask[top : top + SQUARE, left : left + SQUARE] = 1
    image[:, mask.bool()] = torch.tensor([0.95, 0.1, 0.1])[:, None]
    return image, mask


TOKEN = "<sq1>"
"""The square's identifier token (class word "square")."""


def train_and_read(bundle, method: str, map_levels, seed: int, steps: int, reads: dict) -> dict[str, float]:
    """Train ``bundle`` with ``method`` guided by ``map_levels`` on six probe photos (lr 2e-3,
    batch 2, no prior images, the fixed attention weight 1 that docs/sdxl.md measured); return
    the seconds per step and, for each read of ``reads`` (name: map levels), the token's
    attention IoU on eight held-out photos (the square elsewhere)."""
    g = torch.Generator().manual_seed(100 + seed)
    photos = [scene(g) for _ in range(6)]
    concepts = ConceptSet([Concept("square", TOKEN, "square")], [ConceptImage(i, {"square": m}) for i, m in photos])
    config = TrainConfig(
        guidance=method,
        steps=steps,
        learning_rate=2e-3,
        prior_images=0,
        seed=seed,
        map_levels=map_levels,
        instance_batch=2,
        attention_weight_mode="fixed",
    )
    start = time.perf_counter()
    result = train(bundle, concepts, config)
    out = {"s/step": (time.perf_counter() - start) / steps}
    adapter = make_adapter(result, concepts, bundle)
    held_out = [scene(torch.Generator().manual_seed(1000 + seed * 50 + k)) for k in range(8)]
    images, masks = torch.stack([i for i, _ in held_out]), torch.stack([m for _, m in held_out])
    prompts = [f"a {TOKEN} square"] * len(images)
    for read, levels in reads.items():
        maps = attention_on_images(bundle, [adapter], images, prompts, [TOKEN], map_levels=levels, seed=seed)
        out[f"IoU {read}"] = float(attention_iou(maps[:, 0], masks).mean())
    return out


def report(trainings: dict, measure: Callable[[tuple, int], dict[str, float]], seeds: list[int], title: str) -> None:
    """Run ``measure(choice, seed)`` for every training choice and seed, print each choice's
    values as they come, then one markdown table (mean ± sd over seeds) under ``title``."""
    rows = {}
    for name, choice in trainings.items():
        runs = [measure(choice, seed) for seed in seeds]
        rows[name] = {k: [r[k] for r in runs] for k in runs[0]}
        print(name, {k: [round(v, 4) for v in vs] for k, vs in rows[name].items()}, flush=True)
    keys = list(next(iter(rows.values())))
    print(f"\n{title}, seeds {seeds}, mean ± sd over seeds\n")
    print("| training | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name, values in rows.items():
        cells = [f"{statistics.mean(v):.3f} ± {statistics.pstdev(v):.3f}" for v in values.values()]
        print(f"| {name} | " + " | ".join(cells) + " |")
