"""Which blocks should form a diffusion transformer's token map? Measured on tiny Flux- and
SD3.5-architecture models.

A transformer's joint blocks all work at one resolution, so the UNet rule "every resolution but
the finest" has no meaning; the choice is one of depth. This script trains the tiny models of
the tests (``build_tiny_flux_parts`` / ``build_tiny_sd3_parts``, here 6 blocks deep) on the
concept of scripts/sdxl_map_levels.py (a red square on noise, its mask the square). For each
training choice (none; hard on every block; hard on the first half; hard on the second half)
and seed it reports the token's attention IoU on held-out images (the square elsewhere), read
from every block, the first half and the second half, and the training time per step.

    python scripts/dit_map_blocks.py [--family flux|sd3] [--steps 60] [--seeds 0,1,2] [--blocks 6]

Random weights stand in for Flux's and SD3.5's: this measures whether guiding some blocks
localises the others and what each choice costs, not image quality.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.map_probe import report, train_and_read  # noqa: E402
from benchmarks.tiny_models import build_tiny_flux_parts, build_tiny_sd3_parts  # noqa: E402
from textloc_core.backends.flux_backend import bundle_from_flux  # noqa: E402
from textloc_core.backends.sd3_backend import bundle_from_sd3  # noqa: E402

TRAININGS = {
    "none": ("none", "all"),
    "hard, every block": ("hard", "all"),
    "hard, first half": ("hard", "blocks:first_half"),
    "hard, second half": ("hard", "blocks:second_half"),
}
READS = {"every block": "all", "first half": "blocks:first_half", "second half": "blocks:second_half"}


def tiny_bundle(family: str, seed: int, blocks: int):
    """A fresh tiny model of ``family`` with ``blocks`` joint (Flux: double-stream) blocks."""
    if family == "flux":
        return bundle_from_flux(**build_tiny_flux_parts(seed, double_blocks=blocks))
    return bundle_from_sd3(**build_tiny_sd3_parts(seed, joint_blocks=blocks))


def measure(family: str, method: str, blocks_spec: str, seed: int, steps: int, blocks: int) -> dict[str, float]:
    """Train one choice on one seed; its per-step time and held-out IoU per read."""
    torch.manual_seed(seed)
    return train_and_read(tiny_bundle(family, seed, blocks), method, blocks_spec, seed, steps, READS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=("flux", "sd3"), default="flux")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--blocks", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    report(
        TRAININGS,
        lambda choice, seed: measure(args.family, *choice, seed, args.steps, args.blocks),
        seeds,
        f"{args.family}, {args.blocks} blocks, {args.steps} steps",
    )


if __name__ == "__main__":
    main()
