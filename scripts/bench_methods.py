"""The TinyWorld results table: hard vs soft vs none (Custom Diffusion), measured.

    python scripts/bench_methods.py                      # the committed table (docs/results.md)
    python scripts/bench_methods.py --quick --random-weights --out /tmp/bench --work /tmp/bench/work   # smoke run

For each held-out TinyWorld concept (its multi-concept set: 5 photos of the concept next to
the same companion object, masks for both), each seed and each method, on the same data,
steps and seeds:

* single-concept: learn only the new concept (the companion stays in the photos, unnamed,
  as in the paper's "one target in a multi-concept image"), then generate it alone on every
  background and in new scenes with other objects;
* multi-concept: learn both (two tokens), then generate both together on every background.

A method is a spec: ``none``, ``hard`` / ``soft`` (TrainConfig's default attention weight),
``hard@0.1`` (fixed attention_weight), ``hard@cal`` (calibrated, ``--attention-fraction``) or
``hard@cal=1`` (calibrated with its own fraction).

Scored with ``textloc_core.evaluation``: CLIP-I, the paper's definition and the one
scripts/paper_protocol.py computes (CLIP image features, generated vs single-concept
references: here renders of the concept alone; multi: mean over both concepts), CLIP-I pair
(unprojected pooler features against the pair photos the concept was learned from; not the
paper's), CLIP-T (prompt without identifier tokens), KID (subset 5,
TinyWorld CLIP image features), attention IoU (the token's map on fresh renders with exact
masks, noised at t = 200/500/800, Otsu-free fixed threshold 0.5 after min-max) and the share
of the token's attention mass that falls on the companion; and by the TinyWorld judge:
target fidelity (exact: colour, shape and texture; and colour+shape only), leakage (single:
the companion's colour or shape appears on anything, although only the target and objects of
other colours and shapes are prompted; multi: attribute bleed, the target's texture on the
companion's shape or the companion's colour on the target's shape), prompt alignment
(prompted background and other objects present).
Context rows (``--context-rows``; ``records.CONTEXT_ROWS``): the base model prompted with the
class word (no training), the base model told the concept in words (``words``: the most a
token could add on this base model), and fresh renders.
Every method is also compared with ``none`` run by run (``benchmarks.paired``: bootstrap 95% CI
of the mean difference, exact sign test).

Runs are spread over ``--workers`` processes with one torch thread each (on a shared
2-core machine this is several times faster than one process with two threads).
The table goes between the markers of ``docs/results.md`` (text outside them is kept); the
figure (generations + attention overlays per method) to ``docs/results_examples.png``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks import records  # noqa: E402
from benchmarks.sampling import generate_scored  # noqa: E402
from benchmarks.tinyworld_protocol import (  # noqa: E402
    CALIBRATED,
    SETTINGS,
    TABLE_METHODS,
    Protocol,
    concept_set_for,
    concept_words,
    judgement_of,
    kind_spec,
    method_label,
    parse_method,
    train_config,
    world,
)
from textloc_core import api  # noqa: E402
from textloc_core.evaluation import heatmap, judge_scores, localization, metrics, scoring  # noqa: E402

BEGIN, END = "<!-- bench_methods:begin -->", "<!-- bench_methods:end -->"
COLUMNS = (
    ("clip_i", "CLIP-I ↑"),
    ("clip_i_pair", "CLIP-I pair ↑"),
    ("clip_t", "CLIP-T ↑"),
    ("kid", "KID ×100 ↓"),
    ("iou", "IoU ↑"),
    ("attn_other", "attn on other ↓"),
    ("fidelity", "target exact ↑"),
    ("fidelity_cs", "target colour+shape ↑"),
    ("leakage", "leakage ↓"),
    ("alignment", "prompt align ↑"),
)


def _init_worker() -> None:
    torch.set_num_threads(1)


# ----------------------------------------------------------------------------- one run


def _others(concept) -> list:
    """Two plain pretraining objects that share neither shape nor colour with the pair."""
    from textloc_core.tinyworld import ObjectKind

    taken_shapes = {concept.kind.shape, concept.companion.shape}
    taken_colours = {concept.kind.colour, concept.companion.colour}
    pool = [("triangle", "red"), ("cross", "white"), ("diamond", "pink"), ("square", "green"), ("circle", "yellow")]
    return [ObjectKind(s, c) for s, c in pool if s not in taken_shapes and c not in taken_colours][:2]


def _renders(kinds, n: int, seed: int):
    """``n`` fresh renders of exactly ``kinds`` on cycling backgrounds: (images, masks per kind)."""
    from textloc_core import tinyworld

    images, masks = [], []
    for i in range(n):
        scene = tinyworld.render_scene(
            objects=list(kinds), background=tinyworld.BACKGROUNDS[i % 4], seed=10_000 + 97 * seed + i
        )
        images.append(torch.from_numpy(scene.image).permute(2, 0, 1).float())
        masks.append(torch.from_numpy(scene.masks.astype("float32")))
    return torch.stack(images), torch.stack(masks)


def _phrase(kind) -> str:
    return kind.phrase()


def generation_plan(concept, setting: str, tokens: bool | str = True):
    """(prompt, expected scene) pairs for one setting. ``tokens=False``: the class-word prompts
    the base model gets (context row); ``tokens="words"``: each concept described in words
    ("orange dotted star") where its token and class word would be."""
    from textloc_core.data.concepts import with_article
    from textloc_core.tinyworld import BACKGROUNDS

    target, companion = concept.kind, concept.companion
    naming = "words" if tokens == "words" else "token" if tokens else "class word"
    t_word = concept_words(target, f"<{concept.name}>", concept.class_word, naming)
    c_word = concept_words(companion, f"<{concept.companion_name}>", companion.shape, naming)
    plan = []
    if setting == "single":
        # the companion, or its colour or shape on anything: nothing else prompted has either
        leak = [{"colour": companion.colour}, {"shape": companion.shape}]
        for bg in BACKGROUNDS:
            plan.append(
                (f"{with_article(t_word)} on {bg}", judge_scores.ExpectedScene([kind_spec(target)], [], bg, leak))
            )
        for i, other in enumerate(_others(concept)):
            for bg in BACKGROUNDS[i::2][:2]:
                plan.append(
                    (
                        f"{with_article(t_word)} and {with_article(_phrase(other))} on {bg}",
                        judge_scores.ExpectedScene([kind_spec(target)], [kind_spec(other)], bg, leak),
                    )
                )
    else:
        bleed = []
        if target.texture != companion.texture:
            bleed.append({"shape": companion.shape, "texture": target.texture})
        if target.colour != companion.colour:
            bleed.append({"shape": target.shape, "colour": companion.colour})
        for bg in BACKGROUNDS:
            plan.append(
                (
                    f"{with_article(t_word)} and {with_article(c_word)} on {bg}",
                    judge_scores.ExpectedScene([kind_spec(target), kind_spec(companion)], [], bg, bleed),
                )
            )
    return plan


def _prior_cache(out: Path) -> Path:
    return out / "cache" / "priors"


def warm_prior(p: Protocol, out: str, class_word: str, seed: int) -> str:
    """Generate (and cache) one class's prior latents before the runs need them."""
    from textloc_core.training.prior import prior_latents

    w = world(p.random_weights)
    side = int(w["pipe"].unet.config.sample_size)
    prior_latents(
        w["bundle"],
        p.class_prompt.format(class_word=class_word),
        p.prior_images,
        (side, side),
        train_config(p, "none", seed),
        cache_dir=_prior_cache(Path(out)),
    )
    return f"{class_word}/{seed}"


def run_job(p: Protocol, out: str, name: str, seed: int, method: str, setting: str) -> dict:
    """Train one (concept, seed, method, setting), generate, score; returns a flat row."""
    from textloc_core.tinyworld.world import held_out_concept

    began = time.perf_counter()
    w = world(p.random_weights)
    bundle, clip, judge = w["bundle"], w["clip"], w["judge"]
    concept = held_out_concept(name)
    concept_set = concept_set_for(name, seed, setting, p.init_word)
    tokens = [c.token for c in concept_set.concepts]
    result = api.train(bundle, concept_set, train_config(p, method, seed), prior_cache_dir=_prior_cache(Path(out)))
    trained = time.perf_counter()

    plan = generation_plan(concept, setting)
    images, prompts, expected, maps = [], [], [], []
    for k, (prompt, scene) in enumerate(plan):
        gen = generate_scored(bundle, prompt, p, 1000 * seed + k, adapters=[result], maps_for=tokens)
        images.append(gen.images)
        maps.append(torch.stack([gen.token_maps[t] for t in tokens], 1))
        prompts += [prompt] * p.images_per_prompt
        expected += [scene] * p.images_per_prompt
    images, maps = torch.cat(images), torch.cat(maps)
    row = _score(p, clip, judge, concept, setting, images, prompts, expected, tokens, seed)

    # localization on fresh renders with exact masks: training-style prompt, no background
    scenes, masks = _renders([concept.companion, concept.kind], p.n_iou_scenes, seed)
    attn_prompt = result.prompts[0]
    attn = localization.attention_on_images(
        bundle, [result], scenes, [attn_prompt] * len(scenes), tokens, map_levels=p.map_levels_eval, seed=seed
    )
    own = {concept.name: 1, concept.companion_name: 0}  # mask index of each concept in the render
    ious, other_share = [], []
    for k, c in enumerate(concept_set.concepts):
        ious.append(metrics.attention_iou(attn[:, k], masks[:, own[c.name]]).mean().item())
        other_share.append(_mass_share(attn[:, k], masks[:, 1 - own[c.name]]))
    row.update(iou=sum(ious) / len(ious), attn_other=sum(other_share) / len(other_share))
    row.update(
        pair=name,
        seed=seed,
        method=method,
        setting=setting,
        train_s=trained - began,
        total_s=time.perf_counter() - began,
        final_loss=result.history[-1]["loss"],
        effective_attention_weight=result.effective_attention_weight,
    )
    if seed == p.seeds[0]:
        keep = slice(0, None, max(1, p.images_per_prompt))  # one image per prompt
        torch.save(
            {
                "images": images[keep][:4].half(),
                "maps": maps[keep][:4].half(),
                "tokens": tokens,
                "prompts": prompts[:: p.images_per_prompt][:4],
                "render": scenes[:2].half(),
                "render_maps": attn[:2].half(),
            },
            Path(out) / "cache" / f"examples-{name}-{setting}-{method}.pt",
        )
    return row


def _mass_share(maps: torch.Tensor, masks: torch.Tensor) -> float:
    """Mean share of each (min-max normalised) map's mass that lies inside ``masks``."""
    from textloc_core.data.masks import mask_to_grid

    grid = mask_to_grid(masks, tuple(maps.shape[-2:]))
    values = heatmap.normalize_maps(maps.float())
    return ((values * grid).flatten(1).sum(1) / values.flatten(1).sum(1).clamp_min(1e-8)).mean().item()


def _references(concept, setting: str, n: int, seed: int):
    """Single-concept references of each learned concept (renders of it alone), and the KID
    reference set (the target alone; multi: the pair together)."""
    per_concept = [_renders([concept.kind], n, seed + 500)[0]]
    if setting == "multi":
        per_concept.append(_renders([concept.companion], n, seed + 500)[0])
        kid_refs = _renders([concept.companion, concept.kind], n, seed + 700)[0]
    else:
        kid_refs = per_concept[0]
    return per_concept, kid_refs


def _score(p: Protocol, clip, judge, concept, setting, images, prompts, expected, tokens, seed) -> dict:
    refs, kid_refs = _references(concept, setting, p.n_references, seed)
    clip_is = [scoring.image_scores(clip, images, prompts, r, tokens=tokens, kid_feature=clip)["clip_i"] for r in refs]
    # CLIP-I pair: unprojected pooler features against the pair photos (multi-concept references); the paper's
    # CLIP-I is clip_i above (image features against single-concept references, as paper_protocol.py computes it)
    photos = torch.stack([item.image for item in concept_set_for(concept.name, seed, "multi").images])
    pooled = clip.unprojected()
    clip_i_pair = metrics.clip_i_from_features(pooled.encode_image(images), pooled.encode_image(photos))
    scores = scoring.image_scores(clip, images, prompts, kid_refs, tokens=tokens, kid_feature=clip, seed=seed)
    judgements = [judgement_of(v) for v in judge(images)]
    judged = judge_scores.judge_scores(judgements, expected)
    # the same targets without texture: did the concept's colour and shape come through?
    loose = [replace(e, targets=[{k: v for k, v in t.items() if k != "texture"} for t in e.targets]) for e in expected]
    return {
        "clip_i": sum(clip_is) / len(clip_is),
        "clip_i_pair": clip_i_pair,
        "clip_t": scores["clip_t"],
        "kid": 100 * scores["kid"],
        "fidelity": judged.target_fidelity,
        "fidelity_cs": judge_scores.judge_scores(judgements, loose).target_fidelity,
        "leakage": judged.leakage,
        "alignment": judged.prompt_alignment,
    }


def context_job(p: Protocol, out: str, name: str, seed: int, setting: str, what: str) -> dict:
    """Context rows (``records.CONTEXT_ROWS``): ``base`` (the untrained model, class-word
    prompts), ``words`` (the untrained model, the concepts described in words) or ``renders``."""
    from textloc_core.tinyworld.world import held_out_concept

    w = world(p.random_weights)
    concept = held_out_concept(name)
    plan = generation_plan(concept, setting, tokens="words" if what == "words" else False)
    if what in ("base", "words"):
        images = torch.cat(
            [generate_scored(w["bundle"], prompt, p, 1000 * seed + k).images for k, (prompt, _) in enumerate(plan)]
        )
    else:
        kinds = [concept.kind] if setting == "single" else [concept.companion, concept.kind]
        images = _renders(kinds, len(plan) * p.images_per_prompt, seed + 900)[0]
    prompts = [pr for pr, _ in plan for _ in range(p.images_per_prompt)]
    expected = [sc for _, sc in plan for _ in range(p.images_per_prompt)]
    row = _score(p, w["clip"], w["judge"], concept, setting, images, prompts, expected, None, seed)
    if what == "renders":  # renders only show the pair; text/judge columns keep their meaning
        row["alignment"] = float("nan")
    row.update(pair=name, seed=seed, method=what, setting=setting, iou=float("nan"), attn_other=float("nan"))
    return row


# ----------------------------------------------------------------------------- reporting


def _fmt(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "–"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {std:.3f}"


def table(rows: list[dict], methods: tuple[str, ...]) -> str:
    lines = [
        "| setting | method | n | " + " | ".join(title for _, title in COLUMNS) + " |",
        "|---|---|---|" + "---|" * len(COLUMNS),
    ]
    for setting in SETTINGS:
        for method in (*methods, *records.CONTEXT_ROWS):
            sel = [r for r in rows if r["setting"] == setting and r["method"] == method]
            if not sel:
                continue
            label = records.CONTEXT_ROWS.get(method) or method_label(method)
            # renders are not made from the prompts: text and prompt-alignment columns do not apply
            skip = {"clip_t", "alignment"} if method == "renders" else set()
            lines.append(
                f"| {setting} | {label} | {len(sel)} | "
                + " | ".join("–" if k in skip else _fmt([r[k] for r in sel]) for k, _ in COLUMNS)
                + " |"
            )
    return "\n".join(lines)


def per_pair_table(rows: list[dict], methods: tuple[str, ...]) -> str:
    pairs = sorted({r["pair"] for r in rows})
    lines = [
        "| setting | pair | " + " | ".join(f"{method_label(m)} IoU / colour+shape / leakage" for m in methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for setting in SETTINGS:
        for pair in pairs:
            cells = []
            for m in methods:
                sel = [r for r in rows if r["setting"] == setting and r["pair"] == pair and r["method"] == m]
                if not sel:
                    cells.append("–")
                    continue
                cells.append(
                    " / ".join(
                        f"{statistics.fmean([r[k] for r in sel]):.2f}" for k in ("iou", "fidelity_cs", "leakage")
                    )
                )
            lines.append(f"| {setting} | {pair} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


PAIRED = (
    ("iou", "IoU"),
    ("clip_i", "CLIP-I"),
    ("clip_i_pair", "CLIP-I pair"),
    ("fidelity_cs", "colour+shape"),
    ("leakage", "leakage"),
)
"""The columns compared per (pair, seed) against ``none``."""
IOU_GAIN = 0.10
"""The IoU gain over ``none`` whose share of runs the paired table counts (the issue's target)."""


def paired_table(rows: list[dict], methods: tuple[str, ...]) -> str:
    """Every method against ``none`` on the same (pair, seed): mean difference, bootstrap 95% CI,
    runs above / below, exact sign-test p; and the runs whose IoU gain reaches ``IOU_GAIN``."""
    from benchmarks.paired import compare

    def values(setting, method, key):
        return {(r["pair"], r["seed"]): r[key] for r in rows if r["setting"] == setting and r["method"] == method}

    lines = [
        "| setting | method vs none | n | "
        + " | ".join(f"Δ {title}" for _, title in PAIRED)
        + f" | runs with IoU +{IOU_GAIN:g} |",
        "|---|---|---|" + "---|" * (len(PAIRED) + 1),
    ]
    for setting in SETTINGS:
        for method in methods:
            if method == "none" or not values(setting, method, "iou") or not values(setting, "none", "iou"):
                continue
            cells, n = [], 0
            for key, _ in PAIRED:
                c = compare(values(setting, method, key), values(setting, "none", key))
                n = max(n, c.n)
                cells.append(f"{c.mean:+.3f} [{c.ci_low:+.3f}, {c.ci_high:+.3f}] {c.above}/{c.below} p={c.sign_p:.2g}")
            base = values(setting, "none", "iou")
            gains = [v - base[u] for u, v in values(setting, method, "iou").items() if u in base]
            lines.append(
                f"| {setting} | {method_label(method)} | {n} | "
                + " | ".join(cells)
                + f" | {sum(g >= IOU_GAIN for g in gains)}/{len(gains)} |"
            )
    return "\n".join(lines)


def figure(out: Path, p: Protocol, path: Path) -> None:
    """Per setting, one block of rows per method: generations with their token overlays."""
    from PIL import Image

    blocks = []
    pair = p.pairs[0]
    # the fixed-weight sweep would make the figure too tall: none, default-weight and calibrated methods
    shown = [m for m in p.methods if "attention_weight" not in parse_method(m)[1]]
    for setting in SETTINGS:
        grids = []
        for method in shown:
            file = out / "cache" / f"examples-{pair}-{setting}-{method}.pt"
            if not file.is_file():
                continue
            ex = torch.load(file)
            # two generations (maps captured while sampling) and one fresh render (maps at t=200..800)
            side = ex["render_maps"].shape[-1]
            gen_maps = torch.nn.functional.interpolate(ex["maps"][:2].float(), size=(side, side), mode="bilinear")
            images = torch.cat([ex["images"][:2].float(), ex["render"][:1].float()])
            maps = torch.cat([gen_maps, ex["render_maps"][:1].float()])
            labels = [f"{method_label(method)}: generated"] * len(gen_maps) + [f"{method_label(method)}: render"]
            grids.append(heatmap.to_pil(heatmap.token_grid(images, maps, ex["tokens"], row_labels=labels, cell=96)))
        if grids:
            width = max(g.width for g in grids)
            block = Image.new("RGB", (width, sum(g.height for g in grids)), (255, 255, 255))
            y = 0
            for g in grids:
                block.paste(g, (0, y))
                y += g.height
            blocks.append(block)
    if not blocks:
        return
    canvas = Image.new(
        "RGB", (sum(b.width for b in blocks) + 10 * (len(blocks) - 1), max(b.height for b in blocks)), (255, 255, 255)
    )
    x = 0
    for b in blocks:
        canvas.paste(b, (x, 0))
        x += b.width + 10
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def write_markdown(path: Path, body: str) -> None:
    """Put ``body`` between the markers of ``path``, keeping any text around them."""
    text = path.read_text(encoding="utf-8") if path.is_file() else f"# TinyWorld results\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip() + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{head}{BEGIN}\n{body}\n{END}{tail}", encoding="utf-8")


def not_run(rows: list[dict], p: Protocol) -> str:
    """The planned (setting, method) cells that have fewer runs than pairs x seeds, as one line."""
    planned = len(p.pairs) * len(p.seeds)
    short = []
    for setting in p.settings:
        for method in p.methods:
            done = sum(r["setting"] == setting and r["method"] == method for r in rows)
            if done < planned:
                short.append(f"{setting} {method_label(method)} ({done} of {planned})")
    return "Runs not done: " + ("; ".join(short) if short else "none") + "."


def report(rows: list[dict], p: Protocol, command: str, seconds: float, workers: int, figure_name: str) -> str:
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores visible, torch {torch.__version__}, {workers} worker process(es) x 1 thread"
    runs = [r for r in rows if r["method"] in p.methods]
    mean_train = statistics.fmean([r["train_s"] for r in runs]) if runs else float("nan")
    mean_total = statistics.fmean([r["total_s"] for r in runs]) if runs else float("nan")
    return "\n".join(
        [
            f"Command: `{command}`  ",
            f"Date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}  ",
            f"Machine: {machine}  ",
            f"Time: {len(runs)} training runs (mean {mean_train:.0f} s training, {mean_total:.0f} s with evaluation, "
            f"one thread each) + {sum(r['method'] in records.CONTEXT_ROWS for r in rows)} context rows; "
            f"{seconds / 60:.1f} min wall in all, class priors included"
            + ("  \n**Random weights: numbers are meaningless (smoke run).**" if p.random_weights else ""),
            "",
            f"Protocol: `{json.dumps(asdict(p))}`",
            "",
            not_run(rows, p),
            "",
            "Mean ± standard deviation over concept pairs x seeds (n per row).",
            "",
            table(rows, p.methods),
            "",
            "Paired against `none` (same pair, seed and data): mean difference [bootstrap 95% CI] "
            "runs above/below none, exact two-sided sign-test p.",
            "",
            paired_table(rows, p.methods),
            "",
            "Per pair (mean over seeds): attention IoU / judge target colour+shape / judge leakage.",
            "",
            per_pair_table(rows, p.methods),
            "",
            f"![generations and token attention per method]({figure_name})",
        ]
    )


# ----------------------------------------------------------------------------- main


PROTOCOL_OPTIONS = (
    ("--steps", "steps", int, None),
    ("--lr", "learning_rate", float, None),
    ("--instance-batch", "instance_batch", int, "instance images a training step"),
    ("--images-per-prompt", "images_per_prompt", int, None),
    ("--prior-images", "prior_images", int, "class-prior images per class word (0: no prior preservation)"),
    ("--init-word", "init_word", str, 'the word every token starts from ("": its class word; e.g. sks, a rare token)'),
    ("--guidance-scale", "guidance_scale", float, "classifier-free guidance of the generations the bench scores"),
    (
        "--attention-fraction",
        "attention_fraction",
        float,
        "attention_fraction of the calibrated methods (hard@cal, soft@cal)",
    ),
    (
        "--calibration-batches",
        "calibration_batches",
        int,
        "batches the calibrated methods average the gradient norms over",
    ),
    ("--train-map-levels", "train_map_levels", str, '"all_but_finest" (paper), "all", or factors like 1,2'),
    (
        "--unmasked-weight",
        "unmasked_weight",
        float,
        "weight of the pixels outside the masks in the denoising loss (0: masked loss, 1: plain)",
    ),
    (
        "--preservation-weight",
        "preservation_weight",
        float,
        "weight of the text-preservation term (TrainConfig.preservation_weight; 0: off)",
    ),
    (
        "--outside-preservation-weight",
        "outside_preservation_weight",
        float,
        "weight of the outside-preservation term (TrainConfig.outside_preservation_weight; 0: off)",
    ),
    (
        "--other-object-rate",
        "other_object_rate",
        float,
        "share of instance prompts that also name an object the photo does not show (TrainConfig.other_object_rate)",
    ),
    (
        "--token-warmup-steps",
        "token_warmup_steps",
        int,
        "steps (of --steps) that train only the tokens, at --token-warmup-lr",
    ),
    ("--token-warmup-lr", "token_warmup_lr", float, None),
    ("--class-prompt", "class_prompt", str, "class-prior prompt with {class_word} (used with --prior-images)"),
)
"""The command line's options that set a ``Protocol`` field: (option, field, type, help), the
default the field's own."""


def _context_rows(text: str) -> tuple[str, ...]:
    """--context-rows: comma-separated names of ``records.CONTEXT_ROWS``."""
    rows = tuple(w for w in text.split(",") if w)
    unknown = [w for w in rows if w not in records.CONTEXT_ROWS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown context rows {unknown}: choose from {', '.join(records.CONTEXT_ROWS)}"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", default=",".join(Protocol.pairs))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--methods",
        default=",".join(TABLE_METHODS),
        help=f"method specs: hard, soft, none; hard@<lambda> fixed weight, hard@{CALIBRATED} calibrated",
    )
    parser.add_argument("--settings", default=",".join(SETTINGS), help="single, multi or both")
    for option, field, kind, text in PROTOCOL_OPTIONS:
        parser.add_argument(option, dest=field, type=kind, default=getattr(Protocol, field), help=text)
    parser.add_argument("--v-only", action="store_true", help="tune only W_V's delta (W_K stays the base model's)")
    parser.add_argument(
        "--union-sampling",
        action="store_true",
        help="multi-concept runs train random subsets of the concepts each step (Break-A-Scene)",
    )
    parser.add_argument(
        "--recipe", default="", help="name of this settings combination in the records (default: built from the levers)"
    )
    parser.add_argument(
        "--records",
        type=Path,
        default=None,
        help="append one JSON line per finished run to this file (benchmarks/records/*.jsonl)",
    )
    parser.add_argument(
        "--phase",
        default="dev",
        choices=("dev", "heldout", "heldout2", "heldout3"),
        help="what the runs are for in the records: choosing recipes (dev) or the evidence of a held-out round (1, 2 or 3)",
    )
    parser.add_argument("--no-context", action="store_true", help="skip the context rows: another invocation has them")
    parser.add_argument(
        "--context-rows",
        type=_context_rows,
        default=("base", "renders"),
        help="the context rows to run, of " + ", ".join(records.CONTEXT_ROWS) + " (default: base,renders)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="folder for results.md and the figure")
    parser.add_argument(
        "--work",
        type=Path,
        default=REPO / "build" / "bench_methods",
        help="prior cache, per-run rows and example tensors (not committed)",
    )
    parser.add_argument("--markdown", default="results.md")
    parser.add_argument("--figure", default="results_examples.png")
    parser.add_argument("--random-weights", action="store_true", help="TinyWorld architecture, random weights (smoke)")
    parser.add_argument("--quick", action="store_true", help="tiny everything: checks the path, not the method")
    parser.add_argument("--resume", action="store_true", help="keep the rows of finished runs in --work/cache/rows")
    parser.add_argument("--report-only", action="store_true", help="write the report from the rows that exist")
    args = parser.parse_args(argv)

    p = Protocol(
        pairs=tuple(args.pairs.split(",")),
        seeds=tuple(int(s) for s in args.seeds.split(",")),
        methods=tuple(m for m in args.methods.split(",") if m),
        settings=tuple(args.settings.split(",")),
        random_weights=args.random_weights,
        train_keys=not args.v_only,
        union_sampling=args.union_sampling,
        **{field: getattr(args, field) for _, field, _, _ in PROTOCOL_OPTIONS},
    )
    for spec in p.methods:
        parse_method(spec)  # a bad spec fails here, not in a worker
    if not set(p.settings) <= set(SETTINGS):
        parser.error(f"--settings: {args.settings!r}; pick from {', '.join(SETTINGS)}")
    if args.quick:
        p = replace(
            p,
            steps=min(p.steps, 2),
            prior_images=min(p.prior_images, 2),
            prior_steps=2,
            images_per_prompt=1,
            sample_steps=2,
            n_references=5,
            n_iou_scenes=2,
        )
    out, work = args.out, args.work
    (work / "cache").mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    shown = [a for a in (argv if argv is not None else sys.argv[1:]) if a not in ("--resume", "--report-only")]
    command = " ".join(["python scripts/bench_methods.py", *shown])
    began = time.perf_counter()
    version = records.code_version()
    torch.set_num_threads(1)

    from textloc_core.tinyworld.world import held_out_concept

    class_words = sorted(
        {w for name in p.pairs for w in (held_out_concept(name).class_word, held_out_concept(name).companion.shape)}
    )
    # seed-major order: a run cut short still covers every pair, method and setting evenly
    jobs = [
        (name, seed, method, setting)
        for seed in p.seeds
        for setting in p.settings
        for name in p.pairs
        for method in p.methods
    ]
    # context rows need no training: the class-word base model once per pair (first seed), the rest per seed
    context = (
        [
            (name, seed, setting, what)
            for seed in p.seeds
            for setting in p.settings
            for name in p.pairs
            for what in args.context_rows
            if what != "base" or seed == p.seeds[0]
        ]
        if not args.no_context
        else []
    )
    row_dir = work / "cache" / "rows"
    row_dir.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        for old in row_dir.glob("*.json"):
            old.unlink()

    def row_file(kind: str, job: tuple) -> Path:
        return row_dir / (kind + "-" + "-".join(str(x) for x in job) + ".json")

    todo = [] if args.report_only else [("context", j) for j in context] + [("run", j) for j in jobs]
    todo = [(kind, job) for kind, job in todo if not row_file(kind, job).is_file()]
    if todo:
        with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("fork"), initializer=_init_worker) as pool:
            warm = [(p, str(work), w, s) for w in class_words for s in p.seeds] if p.prior_images > 0 else []
            for done in pool.map(warm_prior, *zip(*warm)) if warm else ():
                print("prior", done, flush=True)
            futures = {
                pool.submit(run_job if kind == "run" else context_job, p, str(work), *job): (kind, job)
                for kind, job in todo
            }
            for future in as_completed(futures):
                row = future.result()
                row_file(*futures[future]).write_text(json.dumps(row))
                if args.records is not None:  # context rows too: the base model's numbers are claims as well
                    config = train_config(p, row["method"], row["seed"]) if futures[future][0] == "run" else None
                    records.append_record(
                        args.records,
                        records.record(row, p, config, args.recipe or records.recipe_name(p), args.phase, version),
                    )
                print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    rows = [json.loads(f.read_text()) for f in sorted(row_dir.glob("*.json"))]
    expected = len(jobs) + len(context)
    if len(rows) < expected:
        print(f"note: {len(rows)} of {expected} rows exist; the report covers those", flush=True)
    # wall time of the invocations that ran jobs, summed (a --report-only run adds nothing)
    wall_file = work / "wall.json"
    seconds = json.loads(wall_file.read_text())["seconds"] if wall_file.is_file() and args.resume else 0.0
    if todo:
        seconds += time.perf_counter() - began
    wall_file.write_text(json.dumps({"seconds": seconds}))
    (work / "rows.json").write_text(json.dumps(rows, indent=1))
    figure(work, p, out / args.figure)
    write_markdown(out / args.markdown, report(rows, p, command, seconds, args.workers, args.figure))
    print(f"wrote {out / args.markdown} and {out / args.figure} in {seconds / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
