"""How well does the TinyWorld base model draw what it is asked? Judge-scored sampling benchmark.

    python scripts/bench_tinyworld_quality.py --device cuda --n 200
    python scripts/bench_tinyworld_quality.py --device cpu --n 40      # slower, fewer prompts

Samples 25 steps with classifier-free guidance from the diffusers pipeline and asks the judge:
single-object prompts ("a red star on grass"): is that colour+shape present, is the background
right; two-object prompts: are both present. Prompts use pretraining kinds only. Prints the
rates and rewrites the results section of docs/tinyworld.md (with date and machine).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from textloc_core import tinyworld  # noqa: E402
from textloc_core.tinyworld.world import BACKGROUNDS, PRETRAINING_KINDS, SceneSpec  # noqa: E402

START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def make_prompts(n: int, n_objects: int, seed: int) -> list[tuple[str, list, str]]:
    """(caption, kinds, background) triples; kinds are distinct in colour+shape."""
    rng = np.random.default_rng([seed, n_objects])
    prompts = []
    while len(prompts) < n:
        kinds = [PRETRAINING_KINDS[i] for i in rng.choice(len(PRETRAINING_KINDS), n_objects, replace=False)]
        if len({(k.colour, k.shape) for k in kinds}) < n_objects:
            continue
        bg = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
        from textloc_core.tinyworld.world import PlacedObject

        spec = SceneSpec(bg, tuple(PlacedObject(k, 0, 0, 1) for k in kinds))
        prompts.append((spec.caption(), kinds, bg))
    return prompts


@torch.no_grad()
def sample(pipe, captions: list[str], guidance: float, steps: int, seed: int, batch: int) -> torch.Tensor:
    images = []
    for i in range(0, len(captions), batch):
        gen = torch.Generator(device="cpu").manual_seed(seed + i)
        out = pipe(
            captions[i : i + batch], num_inference_steps=steps, guidance_scale=guidance, generator=gen, output_type="pt"
        )
        images.append(out.images.float().cpu())
    return torch.cat(images)


def score(judge, images, prompts) -> dict[str, float]:
    verdicts = judge(images)
    found_all = found_first = bg_ok = 0
    for v, (_, kinds, bg) in zip(verdicts, prompts):
        hits = [v.has(k) for k in kinds]
        found_all += all(hits)
        found_first += hits[0]
        bg_ok += v.background == bg
    n = len(prompts)
    return {"all_objects": found_all / n, "first_object": found_first / n, "background": bg_ok / n, "n": n}


def wilson_interval(rate: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate measured on ``n`` prompts: how far sampling
    noise alone could move it (200 prompts: about +-7 points at 50%)."""
    if n == 0:
        return 0.0, 1.0
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def with_interval(rate: float, n: int) -> str:
    low, high = wilson_interval(rate, n)
    return f"{rate:.1%} ({low:.0%}-{high:.0%})"


def save_grid(images: torch.Tensor, path: Path) -> None:
    from PIL import Image

    rows = [torch.cat(list(images[i : i + 8]), 2) for i in range(0, len(images), 8)]
    grid = torch.cat(rows, 1).permute(1, 2, 0).clamp(0, 1).mul(255).byte().numpy()
    Image.fromarray(grid).save(path)


@torch.no_grad()
def ceiling(pipe, judge, n: int, seed: int) -> dict[str, dict[str, float]]:
    """The judge on renders and on their VAE round trips: what a perfect UNet could score."""
    from tinyworld_build.train_world import judge_accuracy, render_dataset, to_float

    images, specs, _ = render_dataset(n, seed + 5000, any_kind=False, workers=1)
    device = pipe.vae.device
    x = to_float(images, device).to(pipe.vae.dtype)
    recon = ((pipe.vae.decode(pipe.vae.encode(x * 2 - 1).latent_dist.mean).sample + 1) / 2).clamp(0, 1)
    recon_u8 = (recon.float().permute(0, 2, 3, 1) * 255).round().byte().cpu().numpy()
    out = {
        "renders": judge_accuracy(judge, images, specs, device),
        "vae_round_trips": judge_accuracy(judge, recon_u8, specs, device),
    }
    return {k: {m: round(v, 3) for m, v in r.items()} for k, r in out.items()}


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()} CPU ({torch.get_num_threads()} threads), torch {torch.__version__}"


def write_doc(doc: Path, results: dict) -> None:
    lines = [
        START,
        "",
        f"Measured {results['date']} on {results['machine']} "
        f"({results['steps']} sampling steps, {results['scheduler']}, n={results['n']} prompts per set, "
        f"sampling seed {results['seed']}, judge threshold {results.get('judge_threshold')}; "
        "95% Wilson intervals in brackets).",
        "",
        "| guidance | single: colour+shape found | single: background right | two objects: both found | two objects: first found |",
        "| --- | --- | --- | --- | --- |",
    ]
    for g, r in results["by_guidance"].items():
        single, double = r["single"], r["double"]
        cells = [
            with_interval(single["all_objects"], single["n"]),
            with_interval(single["background"], single["n"]),
            with_interval(double["all_objects"], double["n"]),
            with_interval(double["first_object"], double["n"]),
        ]
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    if "judge_ceiling" in results:
        parts = [
            f"{label}: objects exact {r['objects_exact']:.1%}, object recall {r['object_recall']:.1%}, "
            f"textures exact {r['textures_exact']:.1%}, background {r['background']:.1%}"
            for label, r in (
                ("renders", results["judge_ceiling"]["renders"]),
                ("VAE round trips", results["judge_ceiling"]["vae_round_trips"]),
            )
        ]
        lines += [
            "",
            f"Ceiling, the judge on {results['n']} renders of pretraining kinds and on their VAE round trips "
            "(what a perfect UNet could score): " + "; ".join(parts) + ".",
        ]
    lines += ["", "Targets: single colour+shape >= 70%, background >= 80%, two objects >= 50%.", "", END]
    block = "\n".join(lines)
    text = doc.read_text() if doc.exists() else "# TinyWorld\n\n## Base model quality\n\n" + START + "\n" + END + "\n"
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END) :]
    else:
        text += "\n## Base model quality\n\n" + block + "\n"
    doc.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--weights", type=Path, default=None, help="pipeline folder (default: shipped weights)")
    parser.add_argument(
        "--judge-from",
        type=Path,
        default=None,
        metavar="FOLDER",
        help="weights folder whose judge/ scores the samples (default: --weights; give "
        "textloc_core/tinyworld/weights to score a build whose own judge is weaker, e.g. the cpu preset's)",
    )
    parser.add_argument("--n", type=int, default=200, help="prompts per set")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, nargs="+", default=[5.0, 7.5])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "tinyworld.md")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--grid", type=Path, default=None, help="save a PNG grid of samples (per guidance)")
    args = parser.parse_args()

    pipe = tinyworld.load_pipeline(args.device, path=args.weights)
    judge = tinyworld.load_judge(args.device, path=args.judge_from or args.weights)
    single, double = make_prompts(args.n, 1, args.seed), make_prompts(args.n, 2, args.seed)
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "steps": args.steps,
        "scheduler": type(pipe.scheduler).__name__,
        "n": args.n,
        "seed": args.seed,
        "judge_threshold": judge.threshold,
        "weights": str(args.weights or "shipped"),
        "judge_from": str(args.judge_from or args.weights or "shipped"),
        "by_guidance": {},
    }
    for g in args.guidance:
        t = time.time()
        r = {}
        for label, prompts in (("single", single), ("double", double)):
            images = sample(pipe, [p[0] for p in prompts], g, args.steps, args.seed, args.batch)
            r[label] = score(judge, images, prompts)
            if args.grid:
                save_grid(images[:32], args.grid.with_name(f"{args.grid.stem}_{label}_g{g}.png"))
        r["seconds"] = round(time.time() - t, 1)
        results["by_guidance"][str(g)] = r
        print(f"guidance {g}: single {r['single']}  double {r['double']}  ({r['seconds']} s)", flush=True)
    results["judge_ceiling"] = ceiling(pipe, judge, args.n, args.seed)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    write_doc(args.doc, results)


if __name__ == "__main__":
    main()
