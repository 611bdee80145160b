"""Training configuration: one dataclass, explicit defaults, the paper's values where it has them."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

from ..attention.guidance import GUIDANCE_METHODS
from ..attention.maps import DEFAULT_MAP_LEVELS

ATTENTION_WEIGHT_MODES = ("fixed", "calibrated")
"""How the attention term's weight is set: calibrated at the start (the default), or ``attention_weight`` as given."""
MIXED_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""Autocast modes (``TrainConfig.mixed_precision``); "auto" is bf16 on CUDA when supported, else fp16, fp32 on CPU."""
CONTINUED_KEYS = ("steps", "checkpoint_every", "gradient_checkpointing")
"""Settings a continued run may change: more steps, other checkpoint spacing, or recomputing
activations (memory only; the numbers are the same)."""
OPTIMIZERS = ("adamw", "adamw_8bit")
"""``TrainConfig.optimizer``: torch's AdamW, or bitsandbytes' 8-bit AdamW (CUDA)."""


FORMER_KEYS = {
    "method": ("guidance", lambda value: value),
    "lambda_attn": ("attention_weight", lambda value: value),
    "prior_images_per_class": ("prior_images", lambda value: value),
    "use_8bit_adam": ("optimizer", lambda on: "adamw_8bit" if on else "adamw"),
    "masked_denoise_loss": ("unmasked_weight", lambda on: 0.0 if on else 1.0),
}
"""The one table of settings saved under a former name (adapters, checkpoints, run records):
former key -> (today's field, its value as that field). ``masked_denoise_loss`` was the switch
``unmasked_weight`` generalises (on is weight 0); ``use_8bit_adam`` became ``optimizer``."""


def current_keys(saved: dict) -> dict:
    """``saved`` (a TrainConfig JSON dict of any version) with every former key of
    ``FORMER_KEYS`` replaced by today's field; a key present under both names keeps today's."""
    data = dict(saved)
    for former, (field_name, convert) in FORMER_KEYS.items():
        if former in data:
            value = data.pop(former)
            data.setdefault(field_name, convert(value))
    return data


@dataclass
class TrainConfig:
    """Everything that changes what a training run computes. Saved into every adapter."""

    guidance: str = "hard"
    """The attention loss: "hard" or "soft" (the paper's two), or "none" (plain Custom Diffusion)."""
    steps: int = 400
    learning_rate: float = 1e-5
    scale_lr_by_batch: bool = True
    """As the paper's (Custom Diffusion's) code: effective lr = learning_rate x the images per step,
    instance + prior (1e-5 x (2 + 2) = 4e-5 for one target, 1e-5 x (3 + 3) = 6e-5 for two)."""
    instance_batch: int = 2
    prior_batch: int = 2
    lambda_prior: float = 1.0
    attention_weight: float = 1.0
    """The attention term's weight when ``attention_weight_mode`` is "fixed" (paper: 1; ignored when "calibrated")."""
    attention_weight_mode: str = "calibrated"
    """"calibrated" (the default): before the first step the weight is set so that the norm of
    the attention term's gradient on the trainables is ``attention_fraction`` x the norm of the
    denoising loss's (instance + lambda_prior x prior), both averaged over the batches of the
    first ``calibration_batches`` steps; the weight is then kept for the whole run (and recorded
    in checkpoints, so a resumed run reuses it). Scale-free: one fraction suits any model,
    resolution and map grid, where a plain attention_weight does not; on TinyWorld it kept CLIP-I
    where the paper's fixed 1 lowered it (docs/results.md). "fixed": the weight is ``attention_weight``. The weight a run used is
    ``TrainResult.effective_attention_weight``."""
    attention_fraction: float = 1.0
    """With "calibrated": the attention gradient's norm as a fraction of the denoising gradient's.
    1 (equal): of 0.5, 1 and 2 on TinyWorld, the one that kept CLIP-I, measured both ways, in
    single- and multi-concept runs; 2 lowered leakage more and the paper's CLIP-I with it
    (docs/results.md)."""
    calibration_batches: int = 8
    """With "calibrated": how many batches (those of steps 0, 1, ...) the two gradient norms are
    averaged over. The norms swing with each batch's random timesteps, so one batch gives a
    weight that varies widely between seeds (56x on TinyWorld with one batch, 2.1x with eight;
    docs/results.md); each batch costs about 1.2 training steps."""
    prior_images: int = 200
    """Class-prior images generated once by the base model and cached (0 disables prior loss)."""
    prior_sampling_steps: int = 50
    prior_guidance_scale: float = 6.0
    map_levels: tuple[int, ...] | str = DEFAULT_MAP_LEVELS
    """Which attention resolutions form the token map, as downsampling factors relative to the
    finest attn2 resolution (1 = finest, 2 = half, ...), or "all_but_finest" (paper) / "all"."""
    map_size: int | None = None
    """Side of the common grid the per-resolution maps are upsampled to (None: the largest chosen)."""
    normalize_maps: bool = True
    """Min-max normalise each sample's map per resolution before averaging (paper)."""
    unmasked_weight: float = 0.0
    """Weight of the pixels outside the union of the named concepts' masks in the instance
    denoising loss, whose pixels inside weigh 1 (a weighted mean): 1 is the plain loss, 0 (the
    default, chosen on TinyWorld's held-out runs, docs/results.md) Break-A-Scene's masked loss
    (only the concepts are reconstructed, so unnamed objects in the photos are not learned into
    the K/V deltas), in between OneTrainer's ``unmasked_weight``. Saved settings of versions
    that had the ``masked_denoise_loss`` switch read as 0 (on) or 1, and of versions before
    either as 1, the plain loss they ran."""
    preservation_weight: float = 30.0
    """Weight of the text-preservation term (``preservation``): the relative change the K/V
    deltas make to what W_K and W_V produce for ordinary words (class words and common caption
    words, no identifier), so that the class word and the rest of the prompt keep their meaning.
    0: off. A prior-preservation without images, for UNet models (not Flux / SD3). The default,
    30, is hard guidance's chosen recipe on TinyWorld (docs/results.md); saved settings of
    versions before the term read as 0."""
    outside_preservation_weight: float = 3.0
    """Weight of the outside-preservation term (``outside_preservation``): outside the named
    concepts' masks, the trained prediction is pulled toward the unchanged base model's for the
    same noisy photo and the prompt without identifier tokens, so the token adds nothing beside
    its concept (no second copy, no companion). 0: off; costs one forward without gradient a
    step. The default, 3, is both methods' chosen recipe on TinyWorld's third held-out round
    (docs/results.md); saved settings of versions before the term read as 0."""
    other_object_rate: float = 0.0
    """Share of instance rows whose prompt also names an object the photo does not show ("a
    <tw1> star and a red triangle", ``other_objects``), so that outside preservation teaches the
    adapter to leave a second named object as the base model draws it. 0: off; needs
    ``outside_preservation_weight`` > 0."""
    token_warmup_steps: int = 0
    """Two-phase schedule (Break-A-Scene): the first this many of ``steps`` train only the
    identifier tokens, at ``token_warmup_learning_rate``; the K/V deltas are frozen until then.
    0: one phase, everything trains from the first step."""
    token_warmup_learning_rate: float = 5e-4
    """The tokens' learning rate during ``token_warmup_steps`` (scaled like ``learning_rate``
    when ``scale_lr_by_batch``); afterwards every trainable uses ``learning_rate``."""
    train_keys: bool = True
    """Tune W_K's delta as well as W_V's (Custom Diffusion, the paper). False: only W_V's delta
    trains and W_K stays the base model's (ConceptSplit reports that tuning W_K breaks the
    attention maps and mixes concepts), so the maps move only through the tokens."""
    union_sampling: bool = False
    """Break-A-Scene's union sampling for multi-concept sets: each step, each photo is trained on
    a random non-empty subset of the concepts it shows, the prompt naming only those and the
    masks (attention loss, masked loss) only theirs. No effect with one concept per photo."""
    instance_prompt: str = "photo of {concepts}"
    concept_phrase: str = "a {token} {class_word}"
    concept_joiner: str = " and "
    class_prompt: str = "{class_word}"
    weight_decay: float = 1e-2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    seed: int = 0
    resolution: int | None = None
    """Training image side in pixels (None: the images' own size)."""
    checkpoint_every: int = 50
    mixed_precision: str = "auto"
    """"auto" (bf16 on CUDA when supported, fp16 otherwise, fp32 on CPU), "fp32", "bf16", "fp16"."""
    gradient_checkpointing: bool = False
    optimizer: str = "adamw"
    """One of ``OPTIMIZERS``: "adamw" (torch) or "adamw_8bit" (bitsandbytes, CUDA only)."""

    def __post_init__(self) -> None:
        if self.guidance not in GUIDANCE_METHODS:
            raise ValueError(f"guidance: {self.guidance!r} is not one of {GUIDANCE_METHODS}; pick hard, soft or none")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer: {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        if self.steps < 1:
            raise ValueError(f"steps: {self.steps} must be at least 1")
        if not (self.learning_rate > 0):
            raise ValueError(f"learning_rate: {self.learning_rate} must be a positive number (paper: 1e-5)")
        if self.instance_batch < 1 or self.prior_batch < 0:
            raise ValueError("instance_batch must be >= 1 and prior_batch >= 0")
        if "{token}" not in self.concept_phrase:
            raise ValueError(
                f"concept_phrase: {self.concept_phrase!r} has no {{token}}: the identifier token must "
                "appear in the training prompt, e.g. 'a {token} {class_word}'"
            )
        if "{concepts}" not in self.instance_prompt:
            raise ValueError(f"instance_prompt: {self.instance_prompt!r} needs a {{concepts}} placeholder")
        if self.attention_weight_mode not in ATTENTION_WEIGHT_MODES:
            raise ValueError(
                f"attention_weight_mode: {self.attention_weight_mode!r} is not one of {ATTENTION_WEIGHT_MODES}; "
                "fixed uses attention_weight, calibrated sets the weight from attention_fraction"
            )
        if not (
            isinstance(self.attention_fraction, (int, float))
            and math.isfinite(self.attention_fraction)
            and self.attention_fraction > 0
        ):
            raise ValueError(
                f"attention_fraction: {self.attention_fraction!r} must be a finite number above 0 (e.g. 1: the "
                "attention gradient is as large as the denoising gradient)"
            )
        if not (isinstance(self.calibration_batches, int) and self.calibration_batches >= 1):
            raise ValueError(
                f"calibration_batches: {self.calibration_batches!r} must be a whole number, 1 or more (default 8)"
            )
        if not (
            isinstance(self.attention_weight, (int, float))
            and math.isfinite(self.attention_weight)
            and self.attention_weight >= 0
        ):
            raise ValueError(
                f"attention_weight: {self.attention_weight!r} must be a finite number, 0 or above (paper: 1)"
            )
        self._check_levers()
        if isinstance(self.map_levels, list):
            self.map_levels = tuple(self.map_levels)

    def _check_levers(self) -> None:
        """Refuse out-of-range values of the levers beside guidance, naming the field."""
        if not (isinstance(self.preservation_weight, (int, float)) and self.preservation_weight >= 0):
            raise ValueError(
                f"preservation_weight: {self.preservation_weight!r} must be a number >= 0 (0 turns the text "
                "preservation off)"
            )
        if not (isinstance(self.outside_preservation_weight, (int, float)) and self.outside_preservation_weight >= 0):
            raise ValueError(
                f"outside_preservation_weight: {self.outside_preservation_weight!r} must be a number >= 0 (0 turns "
                "the outside preservation off)"
            )
        if not (isinstance(self.other_object_rate, (int, float)) and 0 <= self.other_object_rate <= 1):
            raise ValueError(f"other_object_rate: {self.other_object_rate!r} must be a share from 0 (off) to 1")
        if self.other_object_rate > 0 and not self.outside_preservation_weight > 0:
            raise ValueError(
                f"other_object_rate: {self.other_object_rate!r} needs outside preservation to hold the other "
                "object to the base model's drawing: set outside_preservation_weight above 0, or the rate to 0"
            )
        if not (isinstance(self.unmasked_weight, (int, float)) and 0 <= self.unmasked_weight <= 1):
            raise ValueError(
                f"unmasked_weight: {self.unmasked_weight!r} must be a number from 0 (masked loss: only the "
                "concepts' pixels count) to 1 (plain loss)"
            )
        if not (isinstance(self.token_warmup_steps, int) and 0 <= self.token_warmup_steps < self.steps):
            raise ValueError(
                f"token_warmup_steps: {self.token_warmup_steps!r} must be a whole number from 0 to steps - 1 "
                f"({self.steps - 1}); the K/V deltas train in the steps after it"
            )
        if not (isinstance(self.token_warmup_learning_rate, (int, float)) and self.token_warmup_learning_rate > 0):
            raise ValueError(
                f"token_warmup_learning_rate: {self.token_warmup_learning_rate!r} must be a positive number (e.g. 5e-4)"
            )

    @property
    def uses_prior(self) -> bool:
        """Prior preservation is on: prior images are generated and each step trains on some."""
        return self.lambda_prior > 0 and self.prior_images > 0 and self.prior_batch > 0

    @property
    def effective_learning_rate(self) -> float:
        if not self.scale_lr_by_batch:
            return self.learning_rate
        return self.learning_rate * (self.instance_batch + (self.prior_batch if self.uses_prior else 0))

    @property
    def effective_warmup_learning_rate(self) -> float:
        """The tokens' rate during the warm-up, scaled by the batch as ``effective_learning_rate`` is."""
        return self.token_warmup_learning_rate * self.effective_learning_rate / self.learning_rate

    @property
    def calibrated(self) -> bool:
        """The attention weight is calibrated at the start (and the run is guided at all)."""
        return self.attention_weight_mode == "calibrated" and self.guidance != "none"

    def to_json(self) -> str:
        data = asdict(self)
        if data["attention_weight_mode"] == "fixed":
            # the fraction changes nothing then; a JSON without the three reads as a fixed run
            # (from_dict), as every run written before calibration existed does
            del data["attention_weight_mode"], data["attention_fraction"], data["calibration_batches"]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_widgets(cls, *, batch: int, resolution: int = 0, **widgets) -> TrainConfig:
        """The config of the ComfyUI Train node's widgets. Each widget is the field of its name
        (``guidance``, ``steps``, ``attention_weight``, ``prior_images``, ``optimizer``, ...)
        except the one deliberate mapping: ``batch`` sets both ``instance_batch`` and, when
        ``prior_images`` > 0 (which turns prior preservation on, ``lambda_prior`` 1),
        ``prior_batch``; and ``resolution`` 0 is the photos' own size (None)."""
        prior = widgets.get("prior_images", cls.prior_images) > 0
        return cls(
            **widgets,
            instance_batch=batch,
            prior_batch=batch if prior else 0,
            lambda_prior=1.0 if prior else 0.0,
            resolution=resolution or None,
        )

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, saved: dict) -> TrainConfig:
        """The config of a saved run's settings (``to_json``'s dict, from any version): former
        names read as today's (``current_keys``), keys a version did not write read as what that
        version ran, keys no longer known are dropped."""
        data = current_keys(saved)
        # a JSON without the mode is a fixed run's (to_json leaves it out; older files never had it)
        data.setdefault("attention_weight_mode", "fixed")
        if data["attention_weight_mode"] == "calibrated":
            # calibrated runs saved before the averaging existed measured one batch
            data.setdefault("calibration_batches", 1)
        data.setdefault("preservation_weight", 0.0)  # versions before the term ran without it
        data.setdefault("unmasked_weight", 1.0)  # versions before the masked loss ran the plain one
        data.setdefault("outside_preservation_weight", 0.0)  # versions before the term ran without it
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
