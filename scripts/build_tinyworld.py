"""Rebuild TinyWorld's weights from scratch (seeded, reproducible).

    python scripts/build_tinyworld.py --device cuda                 # shipped recipe, minutes on a GPU
    python scripts/build_tinyworld.py --device cpu --preset cpu     # 40 min on 2 CPU cores, low quality
    python scripts/build_tinyworld.py --preset quick --out /tmp/tw  # seconds: checks the path runs
    python scripts/build_tinyworld.py --device cuda --preset gpu-long --unet-stop-step 6000   # part 1 ...
    python scripts/build_tinyworld.py --device cuda --preset gpu-long --resume                # ... then go on

Finished phases and the UNet's checkpoint (every 500 steps, and wherever a budget or
--unet-stop-step stops it) are kept in --state; --resume continues an interrupted or
stopped build from there (bit-identical on CPU). Without --resume a build starts over.

Writes a diffusers StableDiffusionPipeline folder (model_index.json, unet/, vae/,
text_encoder/, tokenizer/, scheduler/) plus clip_vision/ and judge/, by default into
textloc_core/tinyworld/weights/ (the shipped location).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tinyworld_build.build import build_all  # noqa: E402
from tinyworld_build.train_world import PRESETS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    parser.add_argument(
        "--preset",
        default=None,
        choices=sorted(PRESETS),
        help="sizes and step counts (default: gpu on cuda, cpu on cpu)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "textloc_core" / "tinyworld" / "weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="processes that render scenes")
    parser.add_argument(
        "--budget",
        action="append",
        default=[],
        metavar="PHASE=SECONDS",
        help="stop a phase (vae, clip, judge) early after SECONDS, or the UNet once the "
        "whole build reaches total=SECONDS (guards a lent GPU's time limit)",
    )
    parser.add_argument(
        "--state",
        type=Path,
        default=ROOT / "build" / "tinyworld_state",
        help="folder for finished phases and the UNet checkpoint (not committed)",
    )
    parser.add_argument("--resume", action="store_true", help="continue the build kept in --state")
    parser.add_argument(
        "--unet-stop-step",
        type=int,
        default=None,
        metavar="N",
        help="stop the UNet at step N (weights saved as they are); --resume goes on from there",
    )
    args = parser.parse_args()
    preset = args.preset or ("gpu" if args.device.startswith("cuda") else "cpu")
    budgets = {}
    for item in args.budget:
        name, _, seconds = item.partition("=")
        if name not in {"vae", "clip", "judge", "total"} or not seconds:
            parser.error(f"--budget {item!r}: write PHASE=SECONDS with PHASE one of vae, clip, judge, total")
        budgets[name] = float(seconds)
    if args.unet_stop_step is not None and args.unet_stop_step < 1:
        parser.error(f"--unet-stop-step {args.unet_stop_step}: give a step of 1 or more")
    try:
        build_all(
            args.out,
            preset,
            args.device,
            seed=args.seed,
            workers=args.workers,
            budgets=budgets,
            state_dir=args.state,
            resume=args.resume,
            unet_stop_step=args.unet_stop_step,
        )
    except ValueError as error:  # e.g. --resume with another build's state: the message says what to do
        parser.error(str(error))


if __name__ == "__main__":
    main()
