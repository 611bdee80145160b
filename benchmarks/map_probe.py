"""The red-square probe the map-level scripts share (sdxl_map_levels.py for SDXL's grids,
dit_map_blocks.py for a transformer's blocks): a concept the tiny random models can see, and
the table that reports each training choice over seeds."""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

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
