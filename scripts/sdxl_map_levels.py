"""Which attention resolutions should guide an SDXL token? Measured on a tiny SDXL-architecture model.

SDXL's attn2 layers sit at two resolutions only (the 64 and 32 grids at 1024 px), so the
paper's rule for SD1.5, "every resolution but the finest", leaves SDXL one grid. This script
trains the tiny SDXL-architecture model of the tests (two text encoders, pooled and size
conditioning, attention at two levels) on a concept it can see: a red square on noise, its
mask the square. For each training choice (none; hard on the coarse level only; hard on both
levels, the default) and seed it reports the token's attention IoU on held-out images (the square
elsewhere), read at the coarse level, the fine level and both, and the training time per step.

    python scripts/sdxl_map_levels.py [--steps 60] [--seeds 0,1,2]

Random weights stand in for SDXL's: this measures whether guiding one level localises the
other and what each choice costs, not image quality.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.map_probe import report, train_and_read  # noqa: E402
from benchmarks.tiny_models import build_tiny_sdxl_parts  # noqa: E402
from textloc_core.backends.diffusers_backend import bundle_from_diffusers  # noqa: E402

TRAININGS = {
    "none": ("none", "all_but_finest"),
    "hard, coarse level only": ("hard", (2,)),
    "hard, both levels (the default)": ("hard", "all_but_finest"),
}
READS = {"coarse": (2,), "fine": (1,), "both": "all"}


def run(method: str, levels: str, seed: int, steps: int) -> dict[str, float]:
    """Train one choice on a fresh tiny SDXL of ``seed``; its per-step time and held-out IoU per read."""
    torch.manual_seed(seed)
    bundle = bundle_from_diffusers(**build_tiny_sdxl_parts(seed))
    return train_and_read(bundle, method, levels, seed, steps, READS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    report(TRAININGS, lambda choice, seed: run(*choice, seed, args.steps), seeds, f"{args.steps} steps")


if __name__ == "__main__":
    main()
