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
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.map_probe import report, scene  # noqa: E402
from benchmarks.tiny_models import build_tiny_sdxl_parts  # noqa: E402
from textloc_core.backends.diffusers_backend import bundle_from_diffusers  # noqa: E402
from textloc_core.data.concepts import Concept, ConceptImage, ConceptSet  # noqa: E402
from textloc_core.evaluation.localization import attention_on_images  # noqa: E402
from textloc_core.evaluation.metrics import attention_iou  # noqa: E402
from textloc_core.training.config import TrainConfig  # noqa: E402
from textloc_core.training.loop import train  # noqa: E402
from textloc_core.training.result import make_adapter  # noqa: E402

TOKEN = "<sq1>"
TRAININGS = {
    "none": ("none", "all_but_finest"),
    "hard, coarse level only": ("hard", (2,)),
    "hard, both levels (the default)": ("hard", "all_but_finest"),
}
READS = {"coarse": (2,), "fine": (1,), "both": "all"}


def run(method: str, levels: str, seed: int, steps: int) -> dict[str, float]:
    torch.manual_seed(seed)
    bundle = bundle_from_diffusers(**build_tiny_sdxl_parts(seed))
    g = torch.Generator().manual_seed(100 + seed)
    photos = [scene(g) for _ in range(6)]
    concepts = ConceptSet([Concept("square", TOKEN, "square")], [ConceptImage(i, {"square": m}) for i, m in photos])
    config = TrainConfig(
        guidance=method,
        steps=steps,
        learning_rate=2e-3,
        prior_images=0,
        seed=seed,
        map_levels=levels,
        instance_batch=2,
        attention_weight_mode="fixed",
    )  # λ = 1, as docs/sdxl.md measured
    start = time.perf_counter()
    result = train(bundle, concepts, config)
    per_step = (time.perf_counter() - start) / steps
    adapter = make_adapter(result, concepts, bundle)
    held_out = [scene(torch.Generator().manual_seed(1000 + seed * 50 + k)) for k in range(8)]
    images = torch.stack([i for i, _ in held_out])
    masks = torch.stack([m for _, m in held_out])
    out = {"s/step": per_step}
    for read, read_levels in READS.items():
        maps = attention_on_images(
            bundle, [adapter], images, [f"a {TOKEN} square"] * len(images), [TOKEN], map_levels=read_levels, seed=seed
        )
        out[f"IoU {read}"] = float(attention_iou(maps[:, 0], masks).mean())
    return out


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
