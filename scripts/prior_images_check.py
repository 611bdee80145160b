"""What TinyWorld's base model draws as class-prior images, by class prompt: why prior
preservation with the bare class word collapsed the bench's runs (docs/results.md).

    python scripts/prior_images_check.py            # 16 images per prompt, the bench's prior sampler

For each held-out concept's class word and each class prompt template, the prior images the
trainer would generate (``training.prior.prior_latents``: DDIM, the bench's 20 steps and
guidance 6, seed 0), judged by the TinyWorld judge: the share with any object at all, and the
share showing the class word's shape. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

TEMPLATES = ("{class_word}", "a {class_word} on grass")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20, help="prior sampling steps (the bench's)")
    parser.add_argument("--guidance", type=float, default=6.0, help="prior guidance scale (TrainConfig's)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from textloc_core import tinyworld
    from textloc_core.backends.diffusers_backend import bundle_from_diffusers
    from textloc_core.tinyworld.world import held_out_concept
    from textloc_core.training.config import TrainConfig
    from textloc_core.training.prior import prior_latents

    bundle, judge = bundle_from_diffusers(tinyworld.load_pipeline()), tinyworld.load_judge()
    side = int(bundle.denoiser.unet.config.sample_size) if hasattr(bundle.denoiser.unet, "config") else 16
    config = TrainConfig(prior_sampling_steps=args.steps, prior_guidance_scale=args.guidance, seed=0)
    print("| class prompt | images with any object | images showing the class shape |\n|---|---|---|")
    for name in ("dotstar", "checkring", "stripebox"):
        word = held_out_concept(name).class_word
        for template in TEMPLATES:
            prompt = template.format(class_word=word)
            latents = prior_latents(bundle, prompt, args.images, (side, side), config)
            verdicts = judge(bundle.denoiser.decode_latents(latents.to(bundle.device)))
            anything = sum(bool(v.objects) for v in verdicts)
            shape = sum(any(s == word for _, s in v.objects) for v in verdicts)
            print(f"| {prompt!r} | {anything}/{args.images} | {shape}/{args.images} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
