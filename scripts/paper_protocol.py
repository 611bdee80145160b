"""The paper's evaluation (Textual Localization, arXiv 2402.09966) on its dataset layout.

For users with a GPU, a local Stable Diffusion 1.5 and a local CLIP ViT-L/14:

    python scripts/paper_protocol.py --model /models/sd15 --clip /models/clip-vit-large-patch14 \\
        --dataset ../shared/paper-dataset --out paper-results --device cuda

For every pair folder ``multi_concept/<a>+<b>`` and every method (hard, soft, none = Custom
Diffusion), with the paper's hyper-parameters (defaults below, all configurable):

* single-concept: learn ``<a>`` alone from the pair's photos (400 steps, 2 instance + 2 prior
  images, lr 4e-5), generate ``prompts/<a>.txt`` (10 prompts) x N images; the same for ``<b>``;
* multi-concept: learn both (800 steps, 3 + 3, lr 6e-5), generate ``prompts/<a>+<b>.txt``;

then score: CLIP-I, the paper's definition (CLIP's projected image features, generated vs the
single-concept references ``single_concept/<name>/resized``; multi: mean over both concepts;
scripts/bench_methods.py's CLIP-I is the same computation against renders of the concept alone), CLIP-T (prompt without the identifier tokens), KID with
subset size 5 (against the same references; Inception features from ``--inception`` if given,
else the CLIP image features), and attention IoU of each token's map on the reference
photos against their masks (``single_concept/<name>/mask``). It prints the paper-style table
(rows: methods, columns: single/multi x metrics, plus the change against Custom Diffusion in
%) and writes it with every per-run number to ``--out``. Nothing is downloaded; the dataset
is read in place, never copied.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.sampling import generate_scored  # noqa: E402
from textloc_core import api  # noqa: E402
from textloc_core.data import readers  # noqa: E402
from textloc_core.evaluation import features, localization, metrics, scoring  # noqa: E402
from textloc_core.training.config import TrainConfig  # noqa: E402

METHODS = ("hard", "soft", "none")
METRICS = (("clip_i", "CLIP-I"), ("clip_t", "CLIP-T"), ("kid", "KID"), ("iou", "IoU"))


@dataclass
class PaperSettings:
    """The paper's training and sampling hyper-parameters (from its released code)."""

    resolution: int = 512
    steps_single: int = 400
    steps_multi: int = 800
    batch_single: int = 2
    batch_multi: int = 3
    lr_single: float = 4e-5
    lr_multi: float = 6e-5
    prior_images: int = 200
    prior_steps: int = 50
    images_per_prompt: int = 50
    n_prompts: int = 10
    sample_steps: int = 50
    guidance_scale: float = 6.0
    kid_subset_size: int = 5
    iou_threshold: float = 0.5
    seed: int = 0
    extra_train: dict = field(default_factory=dict)
    """Other TrainConfig fields (e.g. {"mixed_precision": "bf16", "map_levels": [2, 4, 8]})."""
    prior_cache_dir: str = ""
    """Where class-prior latents are cached between runs ("" keeps them in memory only)."""

    def train_config(self, method: str, multi: bool) -> TrainConfig:
        batch = self.batch_multi if multi else self.batch_single
        values = dict(
            guidance=method,
            steps=self.steps_multi if multi else self.steps_single,
            learning_rate=self.lr_multi if multi else self.lr_single,
            scale_lr_by_batch=False,
            instance_batch=batch,
            prior_batch=batch,
            prior_images=self.prior_images,
            prior_sampling_steps=self.prior_steps,
            resolution=self.resolution,
            seed=self.seed,
            instance_prompt="photo of {concepts}",
            # the paper's attention weight, not the pack's calibrated default
            attention_weight_mode="fixed",
            attention_weight=1.0,
        )
        values.update(self.extra_train)  # the user's word wins
        return TrainConfig(**values)


def _image_batch(concept_set) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, H, W) photos and (N, H, W) masks of a one-concept set."""
    name = concept_set.concepts[0].name
    images = torch.stack([item.image for item in concept_set.images])
    masks = torch.stack([item.masks[name] for item in concept_set.images])
    return images, masks


def run_entry(
    bundle, clip, kid_feature, dataset: Path, pair: str, targets: list[str], method: str, s: PaperSettings, log=print
) -> dict:
    """Train ``targets`` (one or both concepts of ``pair``) with ``method``, generate, score."""
    multi = len(targets) > 1
    full = readers.read_paper_dataset(dataset, pair, resolution=s.resolution)
    concept_set = scoring.only_concepts(full, targets)
    tokens = [c.token for c in concept_set.concepts]
    config = s.train_config(method, multi)
    began = time.perf_counter()
    result = api.train(
        bundle, concept_set, config, prior_cache_dir=Path(s.prior_cache_dir) if s.prior_cache_dir else None
    )
    train_s = time.perf_counter() - began

    which = pair if multi else targets[0]
    ordered = [c.token for name in pair.split("+") for c in concept_set.concepts if c.name == name] if multi else tokens
    prompts = readers.paper_prompts(dataset, which, ordered)[: s.n_prompts]
    images, all_prompts = [], []
    for k, prompt in enumerate(prompts):
        gen = generate_scored(
            bundle, prompt, s, s.seed * 1000 + k, adapters=[result], size=(s.resolution, s.resolution)
        )
        images.append(gen.images)
        all_prompts += [prompt] * s.images_per_prompt
    images = torch.cat(images)

    clip_i, kid, iou = [], [], []
    for concept in concept_set.concepts:
        refs = readers.read_paper_dataset(dataset, concept.name, resolution=s.resolution)
        ref_images, ref_masks = _image_batch(refs)
        scores = scoring.image_scores(
            clip,
            images,
            all_prompts,
            ref_images,
            tokens=tokens,
            kid_feature=kid_feature,
            kid_subset_size=s.kid_subset_size,
            seed=s.seed,
        )
        clip_i.append(scores["clip_i"])
        kid.append(scores["kid"])
        prompt = config.instance_prompt.format(
            concepts=config.concept_phrase.format(token=concept.token, class_word=concept.class_word)
        )
        maps = localization.attention_on_images(
            bundle, [result], ref_images, [prompt] * len(ref_images), [concept.token], seed=s.seed
        )
        iou.append(metrics.attention_iou(maps[:, 0], ref_masks, threshold=s.iou_threshold).mean().item())
    texts = clip.encode_text([metrics.strip_identifier(p, tokens) for p in all_prompts])
    row = {
        "pair": pair,
        "targets": targets,
        "setting": "multi" if multi else "single",
        "method": method,
        "clip_i": statistics.fmean(clip_i),
        "clip_t": metrics.clip_t_from_features(clip.encode_image(images), texts),
        "kid": statistics.fmean(kid),
        "iou": statistics.fmean(iou),
        "train_s": train_s,
        "n_images": len(images),
        "steps": result.steps_done,
    }
    log(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}))
    return row


def paper_table(rows: list[dict], methods: tuple[str, ...]) -> str:
    """Rows: methods; columns: single / multi x CLIP-I, CLIP-T, KID, IoU (means over entries),
    and the change of CLIP-I / CLIP-T against Custom Diffusion (none) in %."""

    def mean(setting, method, key):
        values = [r[key] for r in rows if r["setting"] == setting and r["method"] == method and not math.isnan(r[key])]
        return statistics.fmean(values) if values else float("nan")

    header = ["method"] + [f"{s} {title}" for s in ("single", "multi") for _, title in METRICS]
    header += ["single CLIP-I vs none", "single CLIP-T vs none", "multi CLIP-I vs none", "multi CLIP-T vs none"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        label = "Custom Diffusion (none)" if method == "none" else f"{method} guidance"
        cells = [f"{mean(s, method, k):.4f}" for s in ("single", "multi") for k, _ in METRICS]
        for s in ("single", "multi"):
            for key in ("clip_i", "clip_t"):
                base, value = mean(s, "none", key), mean(s, method, key)
                cells.append(
                    "–"
                    if method == "none" or math.isnan(base) or base == 0
                    else f"{100 * (value - base) / abs(base):+.2f}%"
                )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_feature_models(clip_dir: str, inception: str | None, device: str):
    clip = features.ClipFeatureModel.from_directory(clip_dir, device=device)
    kid_feature = features.inception_from_file(inception).to(device) if inception else clip
    return clip, kid_feature


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="local diffusers folder or single-file SD checkpoint")
    parser.add_argument("--clip", required=True, help="local CLIP folder (paper: clip-vit-large-patch14)")
    parser.add_argument("--inception", help="local torchvision InceptionV3 .pth for KID (else CLIP image features)")
    parser.add_argument("--dataset", type=Path, default=readers.find_paper_dataset(REPO))
    parser.add_argument("--pairs", help="comma-separated pair folders (default: every multi_concept/ folder)")
    parser.add_argument(
        "--single",
        default="all",
        choices=("all", "first", "none"),
        help="which concepts of each pair get a single-concept run",
    )
    parser.add_argument("--no-multi", action="store_true", help="skip the multi-concept runs")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("paper-results"))
    for name, default in asdict(PaperSettings()).items():
        if name == "extra_train":
            parser.add_argument("--extra-train", type=json.loads, default={}, help="JSON of other TrainConfig fields")
        elif name != "prior_cache_dir":
            parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    args = parser.parse_args(argv)
    if args.dataset is None or not Path(args.dataset).is_dir():
        parser.error("--dataset: the paper dataset folder was not found; pass its path (it is not shipped)")

    args.out.mkdir(parents=True, exist_ok=True)
    fields = {k: getattr(args, k) for k in asdict(PaperSettings()) if k not in ("extra_train", "prior_cache_dir")}
    settings = PaperSettings(
        **fields, extra_train=dict(args.extra_train), prior_cache_dir=str(args.out / "prior-cache")
    )
    methods = tuple(args.methods.split(","))
    pairs = (
        args.pairs.split(",")
        if args.pairs
        else sorted(p.name for p in (args.dataset / "multi_concept").iterdir() if p.is_dir())
    )

    bundle = api.load_model(args.model, device=args.device)
    clip, kid_feature = load_feature_models(args.clip, args.inception, args.device)
    entries = []
    for pair in pairs:
        names = pair.split("+")
        singles = {"all": names, "first": names[:1], "none": []}[args.single]
        entries += [(pair, [n]) for n in singles] + ([] if args.no_multi else [(pair, names)])
    began = time.perf_counter()
    rows = []
    for pair, targets in entries:
        for method in methods:
            rows.append(run_entry(bundle, clip, kid_feature, args.dataset, pair, targets, method, settings))
    table = paper_table(rows, methods)
    print(table)
    (args.out / "rows.json").write_text(json.dumps(rows, indent=1))
    command = "python scripts/paper_protocol.py " + " ".join(argv if argv is not None else sys.argv[1:])
    (args.out / "results.md").write_text(
        f"# Paper protocol results\n\nCommand: `{command}`  \n"
        f"Date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}  \n"
        f"Device: {args.device}; wall time {(time.perf_counter() - began) / 60:.1f} min  \n"
        f"Settings: `{json.dumps(asdict(settings))}`\n\n{table}\n",
        encoding="utf-8",
    )
    print(f"wrote {args.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
