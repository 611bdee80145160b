"""The TinyWorld bench's protocol: what decides its numbers and how one run trains.

The method specs (``hard``, ``hard@0.1``, ``hard@cal``, ``hard@cal=0.5``, ``none``), the
``Protocol`` (every setting written into the results), the world a process loads once (the
TinyWorld model, its CLIP feature model and judge), each run's concept set and its
``TrainConfig``. scripts/bench_methods.py runs and reports the bench on it;
scripts/calibration_spread.py measures the calibrated weight on the same runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from benchmarks.tiny_models import build_random_tinyworld_pipeline
from textloc_core.data.concepts import ConceptSet
from textloc_core.evaluation import features, judge_scores, scoring
from textloc_core.training.config import TrainConfig

METHODS = ("hard", "soft", "none")
LAMBDAS = ("1", "0.3", "0.1", "0.03")
TABLE_METHODS = ("none", "hard@cal", "soft@cal", *(f"{m}@{w}" for m in ("hard", "soft") for w in LAMBDAS))
"""The committed table's rows: the baseline, both guidances calibrated, and both at every fixed weight."""
SETTINGS = ("single", "multi")
CALIBRATED = "cal"
"""The weight part of a method spec ``hard@cal``: attention_weight_mode "calibrated" (with
``--attention-fraction``); ``hard@cal=0.5`` sets the fraction of that row itself."""


@dataclass(frozen=True)
class Protocol:
    """Everything that decides the numbers (written into results.md)."""

    pairs: tuple[str, ...] = ("dotstar", "checkring", "stripebox")
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = TABLE_METHODS
    steps: int = 100
    learning_rate: float = 3e-3
    """The tuned recipe (docs/results.md, "Tuning the baseline"): 3e-3 without prior preservation."""
    instance_batch: int = 2
    """Instance images a step (of the five photos; the learning rate is not scaled by it)."""
    prior_images: int = 0
    """Class-prior images per class word (0: no prior preservation)."""
    prior_steps: int = 20
    """Sampling steps of each class-prior image."""
    images_per_prompt: int = 4
    """Images generated for each prompt of a run's generation plan."""
    sample_steps: int = 20
    """Sampling steps of each scored generation."""
    guidance_scale: float = 5.0
    """Classifier-free guidance of the scored generations."""
    n_references: int = 16
    """Renders of each concept alone that CLIP-I and KID compare the generations with."""
    n_iou_scenes: int = 8
    """Fresh renders with exact masks that the attention IoU is measured on."""
    map_levels_eval: str = "all"
    """Attention resolutions of the token maps the IoU reads."""
    train_map_levels: str = "all_but_finest"
    """Attention resolutions the guidance uses (TrainConfig.map_levels; the paper: all but the finest)."""
    settings: tuple[str, ...] = SETTINGS
    init_word: str = ""
    """The word every identifier token starts from ("": its class word, TrainConfig's default)."""
    attention_fraction: float = TrainConfig.attention_fraction
    """The fraction of plain ``@cal`` methods, the table's "hard (calibrated)" rows (TrainConfig's default)."""
    calibration_batches: int = TrainConfig.calibration_batches
    """Batches the calibrated methods average the gradient norms over (TrainConfig's default)."""
    unmasked_weight: float = 1.0
    """TrainConfig.unmasked_weight: 1 the plain denoising loss, 0 Break-A-Scene's masked loss."""
    preservation_weight: float = 0.0
    """TrainConfig.preservation_weight: the text-preservation term's weight (0: off)."""
    outside_preservation_weight: float = 0.0
    """TrainConfig.outside_preservation_weight: the outside-preservation term's weight (0: off)."""
    other_object_rate: float = 0.0
    """TrainConfig.other_object_rate: share of instance prompts that also name another object."""
    token_warmup_steps: int = 0
    """TrainConfig.token_warmup_steps: steps (of ``steps``) that train only the tokens."""
    token_warmup_lr: float = TrainConfig.token_warmup_learning_rate
    train_keys: bool = True
    """False: V only (TrainConfig.train_keys)."""
    union_sampling: bool = False
    """Break-A-Scene's union sampling of the concepts (multi-concept runs)."""
    class_prompt: str = "{class_word}"
    """The class-prior prompt (TrainConfig.class_prompt), with prior images only."""
    random_weights: bool = False


# ----------------------------------------------------------------------------- the world

_WORLD: dict = {}


def _random_world() -> dict:
    """TinyWorld's architecture with random weights: the whole path runs, numbers mean nothing."""
    from textloc_core.tinyworld import model_configs as mc
    from textloc_core.tinyworld.judge import Judge, JudgeNet

    pipe = build_random_tinyworld_pipeline()
    text = pipe.text_encoder.eval()
    vision = mc.build_vision_encoder().eval()
    clip = features.ClipFeatureModel(vision, text, pipe.tokenizer)
    return {"pipe": pipe, "clip": clip, "judge": Judge(JudgeNet(8))}


def world(random_weights: bool) -> dict:
    """The TinyWorld bundle, CLIP feature model and judge, loaded once per process."""
    if not _WORLD:
        if random_weights:
            parts = _random_world()
        else:
            from textloc_core import tinyworld

            text, vision, tokenizer = tinyworld.load_clip()
            parts = {
                "pipe": tinyworld.load_pipeline(),
                "judge": tinyworld.load_judge(),
                "clip": features.ClipFeatureModel(vision, text, tokenizer),
            }
        from textloc_core.backends.diffusers_backend import bundle_from_diffusers

        parts["bundle"] = bundle_from_diffusers(parts["pipe"])
        _WORLD.update(parts)
    return _WORLD


# ----------------------------------------------------------------------------- judging


def kind_spec(kind, with_texture: bool = True) -> dict[str, str]:
    """An object kind as the judge scores it: shape and colour (and texture)."""
    spec = {"shape": kind.shape, "colour": kind.colour}
    if with_texture:
        spec["texture"] = kind.texture
    return spec


NAMINGS = ("token", "class word", "words")
"""How a prompt can name a concept (``concept_words``)."""


def concept_words(kind, token: str, class_word: str, naming: str) -> str:
    """The words a prompt names a concept of look ``kind`` with: its identifier token and class
    word ("<dotstar> star"), the class word alone ("star", what the base model is asked for), or
    its look in words ("orange dotted star", the most a token could add on the base model)."""
    if naming not in NAMINGS:
        raise ValueError(f"naming {naming!r}: expected one of {NAMINGS}")
    return {"token": f"{token} {class_word}", "class word": class_word, "words": kind.phrase()}[naming]


def judgement_of(verdict) -> judge_scores.Judgement:
    """The TinyWorld judge's pairwise verdict as partial detections (see judge_scores.object_present)."""
    objects = [{"colour": c, "shape": s} for c, s in sorted(verdict.objects)]
    objects += [{"texture": t, "shape": s} for t, s in sorted(verdict.textures)]
    return judge_scores.Judgement(objects, verdict.background)


# ----------------------------------------------------------------------------- one run's data and config


def concept_set_for(name: str, seed: int, setting: str, init_word: str = "") -> ConceptSet:
    """The pair's personalisation set (single: only ``name`` is named), every token starting
    from ``init_word`` ("": its class word)."""
    from textloc_core import tinyworld

    full = tinyworld.personalization_set(name, seed)
    chosen = full if setting == "multi" else scoring.only_concepts(full, [name])
    if init_word:
        chosen = replace(chosen, concepts=[replace(c, init_word=init_word) for c in chosen.concepts])
    return chosen


def parse_method(spec: str) -> tuple[str, dict]:
    """A method spec as the bench's rows name it: ``hard`` (TrainConfig's default attention
    weight), ``hard@0.1`` (fixed attention_weight 0.1), ``hard@cal`` (calibrated, the protocol's
    fraction) or ``hard@cal=0.5`` (calibrated, fraction 0.5), and ``none``; returns
    (guidance method, TrainConfig fields of the weight)."""
    method, _, weight = spec.partition("@")
    mode, _, fraction = weight.partition("=")
    if method not in METHODS or (method == "none" and weight) or (fraction and mode != CALIBRATED):
        raise ValueError(
            f"method {spec!r}: expected hard, soft or none, optionally hard@<lambda>, "
            f"hard@{CALIBRATED} or hard@{CALIBRATED}=<fraction>"
        )
    if not weight:
        return method, {}
    if mode == CALIBRATED:
        return method, {
            "attention_weight_mode": "calibrated",
            **({"attention_fraction": float(fraction)} if fraction else {}),
        }
    return method, {"attention_weight_mode": "fixed", "attention_weight": float(weight)}


def method_label(spec: str) -> str:
    """The table's name of a method spec: ``hard (calibrated)``, ``hard (calibrated, fraction 1)``,
    ``hard (λ=0.1)``, ``none (Custom Diffusion)``."""
    method, weight = parse_method(spec)
    if method == "none":
        return "none (Custom Diffusion)"
    if weight.get("attention_weight_mode") == "calibrated":
        own = weight.get("attention_fraction")
        return f"{method} (calibrated)" if own is None else f"{method} (calibrated, fraction {own:g})"
    return f"{method} (λ={weight['attention_weight']:g})" if weight else method


def train_config(p: Protocol, spec: str, seed: int) -> TrainConfig:
    method, weight = parse_method(spec)
    return TrainConfig(
        guidance=method,
        steps=p.steps,
        learning_rate=p.learning_rate,
        scale_lr_by_batch=False,
        instance_batch=p.instance_batch,
        prior_batch=2,
        prior_images=p.prior_images,
        prior_sampling_steps=p.prior_steps,
        instance_prompt="{concepts}",
        seed=seed,
        checkpoint_every=10**9,
        mixed_precision="fp32",
        map_levels=p.train_map_levels
        if p.train_map_levels in ("all", "all_but_finest")
        else tuple(int(f) for f in p.train_map_levels.split(",")),
        calibration_batches=p.calibration_batches,
        unmasked_weight=p.unmasked_weight,
        preservation_weight=p.preservation_weight,
        outside_preservation_weight=p.outside_preservation_weight,
        other_object_rate=p.other_object_rate,
        token_warmup_steps=p.token_warmup_steps,
        token_warmup_learning_rate=p.token_warmup_lr,
        train_keys=p.train_keys,
        union_sampling=p.union_sampling,
        class_prompt=p.class_prompt,
        **{"attention_fraction": p.attention_fraction, **weight},
    )
