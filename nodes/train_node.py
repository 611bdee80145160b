"""TextLoc Train: MODEL + CLIP + VAE + concepts -> an adapter (and its files).

The node is glue: it builds a ``TrainConfig`` from the widgets, a ``ModelBundle`` from
ComfyUI's objects (``comfy_backend.training_session``), and calls ``textloc_core.training.loop.train``.
Around that it does what a ComfyUI user relies on:

* progress: a ComfyUI progress bar whose preview is the loss curve so far, plus the
  current losses as the node's progress text;
* Cancel: ComfyUI's Cancel (UI button or POST /interrupt) reaches the trainer as the core's
  stop (``comfy_cancel``): polled before every step, raised from inside a model call. The
  trainer writes a checkpoint of the steps done, the node says where it is, and the prompt
  ends as interrupted. Queue it again with the same settings and it resumes from there;
* memory: the adapter output holds only the K/V deltas and token embeddings; the
  optimizer and activations die with the trainer, and the allocator cache is emptied.
"""

from __future__ import annotations

import gc
import logging

from comfy_api.latest import io, ui

from ..textloc_core.attention.maps import DEFAULT_MAP_LEVELS, NAMED_MAP_LEVELS
from ..textloc_core.data.validation import CheckedConceptSet, validate_concept_set
from ..textloc_core.training import loop, preservation
from ..textloc_core.training.config import (
    ATTENTION_WEIGHT_MODES,
    GUIDANCE_METHODS,
    MIXED_PRECISIONS,
    OPTIMIZERS,
    TrainConfig,
)
from ..textloc_core.training.result import make_adapter
from ..textloc_core.training.setup import size_multiple
from . import disk_budget, paths
from .comfy_backend import base_fingerprint_and_weights, training_denoiser, training_session
from .comfy_cancel import cancel_as_core, end_prompt_cancelled, stop_requested
from .comfy_internals import dit_layout, model_parts
from .comfy_tokens import IdentifierPlacer
from .schema import ADAPTER, CONCEPTS, NodeText, named, require_finite
from .stock_files import check_replace, plan_files, write_files

log = logging.getLogger("textloc")
#: training sides above this many times the model's native size need allow_large_resolution
LARGE_RESOLUTION_FACTOR = 2

TRAIN_DESCRIPTION = (
    "Textual Localization training: learns one token per concept plus the cross-attention K/V weights, "
    "guiding each token's attention map with its mask. Writes models/textloc/<name>.safetensors, a stock "
    "LoRA (models/loras/textloc) and stock embeddings (models/embeddings/textloc)."
)
TRAIN_TOOLTIPS = {
    "model": "The base diffusion model from any loader: SD1.x, SD2.x, SDXL, or Flux.1 / SD3 / SD3.5 (Load Diffusion Model, its fp8 weight_dtype included, or a checkpoint).",
    "clip": "Its text encoder. Flux: DualCLIPLoader with clip_l + t5xxl; SD3 / SD3.5: TripleCLIPLoader (clip_l, clip_g, t5xxl). With Flux and SD3 a token also gets a vector in T5's output.",
    "vae": "Its VAE (encodes the training photos).",
    "concepts": "Photos with masks, from TextLoc Concept From Mask / Concept Folder.",
    "guidance": "hard: pull each token's attention onto its mask; soft: only suppress it outside the mask; none: plain Custom Diffusion.",
    "steps": "Optimiser steps (paper: 400 for one concept, 800 for two).",
    "learning_rate": "Base learning rate, scaled by the batch size as in the paper (1e-5 x 2 = 2e-5).",
    "batch": "Training photos per step (and as many prior images).",
    "prior_images": "Class images the base model generates once (cached) for prior preservation; paper: 200. 0 turns prior preservation off.",
    "seed": "Seed of batches, timesteps and noise (the same seed gives the same adapter).",
    "checkpoint_every": "Write a resumable checkpoint every N steps (and when cancelled).",
    "adapter_name": "File name of the adapter (letters, digits, - _ .); also names the checkpoint folder.",
    "resolution": "Training side in pixels; 0 keeps the photos' size.",
    "attention_weight": "Weight of the attention loss when attention_weight_mode is fixed (paper: 1).",
    "resume": "Continue from this adapter name's latest checkpoint when one exists (same settings).",
    "allow_large_resolution": f"Train at more than {LARGE_RESOLUTION_FACTOR}x the model's native size (TinyWorld 64 px, SD1.x 512 px, SDXL 1024 px); off: such a resolution is refused before training.",
    "overwrite": "Replace an existing adapter of this name trained on other photos, concepts, settings or base model (and its LoRA and embeddings). Off: refused; continuing the same training always may.",
    "attention_weight_mode": f"calibrated (default): before the first step the attention loss's weight is set so that its gradient is attention_fraction x the denoising loss's, averaged over the first {TrainConfig.calibration_batches} batches; the same fraction suits any model and resolution, and attention_weight is unused. fixed: the attention loss is weighted by attention_weight (the paper's 1, which on TinyWorld lowered fidelity). The report shows the weight used.",
    "attention_fraction": "With attention_weight_mode calibrated: the attention gradient as a fraction of the denoising gradient at the start (1: as large; 0.1: a tenth).",
    "gradient_checkpointing": "Recompute the UNet's (or Flux / SD3 blocks') activations in the backward pass instead of keeping them: much less memory, about a third more time per step. Turn on for SDXL, Flux or SD3.5 at 1024 px on a 24 GB card.",
    "mixed_precision": "Autocast of the forward pass: auto is bf16 on GPUs that support it (else fp16) and fp32 on CPU. Trained weights stay fp32.",
    "optimizer": "adamw: torch's AdamW. adamw_8bit: bitsandbytes' 8-bit AdamW (CUDA, needs pip install bitsandbytes): smaller optimizer state.",
    "map_levels": "Attention resolutions the guidance pulls onto the masks: all_but_finest (the paper's; SDXL keeps both of its two, Flux / SD3 the second half of the blocks) or all. On TinyWorld, whose finest map is 16x16, all was chosen (docs/results.md).",
    "preservation_weight": "Text preservation: keeps what the attention K/V make of the class word and of common caption words (colours, backgrounds, objects, styles) while the adapter learns, so the rest of the prompt keeps working and the class word does not turn into the concept. 0: off. SD1.x, SD2.x and SDXL; Flux and SD3 train without it.",
    "outside_preservation_weight": "Outside preservation: outside the concepts' masks the adapter is held to what the unchanged model predicts for the prompt without the token, so the token adds nothing beside its concept (no second copy, no companion object) and the rest of the picture follows the prompt. 0: off. Costs one extra forward pass without gradient a step.",
    "unmasked_weight": "Masked loss: how much the photo outside the concepts' masks counts in the denoising loss. 1: all of it (plain Custom Diffusion); 0: only the masked concepts are reconstructed (Break-A-Scene), so unmasked objects and backgrounds are not learned into the adapter. OneTrainer calls it unmasked_weight.",
}
"""What each Train input does, as its tooltip in the UI says."""
TRAIN_NODE = NodeText("TextLocTrain", "TextLoc Train", TRAIN_DESCRIPTION, TRAIN_TOOLTIPS)


def native_resolution(model) -> int:
    """The side in pixels the model was trained at: set by the TinyWorld loader (64), else
    1024 for SDXL-family, Flux.1 and SD3 / SD3.5 models, else the SD1.x/SD2.x convention (768
    for v-prediction, as SD2's 768-v, otherwise 512)."""
    parts = model_parts(model)
    if parts.tagged_resolution:
        return parts.tagged_resolution
    if parts.is_sdxl or dit_layout(parts) is not None:
        return 1024
    return 768 if parts.prediction == "v_prediction" else 512


def check_resolution(model, concepts, resolution: int, allow_large: bool) -> None:
    """Refuse, before any work, a training side the model cannot finish in reasonable time (the
    cost of a step grows with the square of the side, attention with its fourth power)."""
    if allow_large:
        return
    native = native_resolution(model)
    limit = LARGE_RESOLUTION_FACTOR * native
    side = resolution or max(max(item.image.shape[-2:]) for item in concepts.images)
    if side > limit:
        given = f"{side}" if resolution else f"0 keeps the photos' size, {side} px, which"
        raise ValueError(
            f"resolution: {given} is more than {LARGE_RESOLUTION_FACTOR}x this model's native {native} px; a step "
            f"would take very long and a lot of memory. Set resolution to at most {limit} (here or in the concept "
            "node), or turn allow_large_resolution on to train that large anyway"
        )


def loss_curve(history: list[dict[str, float]], size: tuple[int, int] = (256, 128)):
    """A small PIL picture of the loss so far (white = total, orange = attention loss)."""
    from PIL import Image, ImageDraw

    width, height = size
    picture = Image.new("RGB", size, (24, 24, 24))
    draw = ImageDraw.Draw(picture)
    for key, colour in (("loss", (240, 240, 240)), ("attention", (255, 150, 40))):
        values = [h[key] for h in history if key in h]
        if len(values) < 2:
            continue
        top, bottom = max(values), min(values)
        span = (top - bottom) or 1.0
        points = [
            (int(i * (width - 1) / (len(values) - 1)), int((height - 8) - (v - bottom) / span * (height - 16)))
            for i, v in enumerate(values)
        ]
        draw.line(points, fill=colour, width=1)
    return picture


def attention_weight_line(config: TrainConfig, weight: float | None) -> str:
    """The report's line naming the attention loss's weight the run used (its
    ``effective_attention_weight``: the ``attention_weight`` widget's when fixed)."""
    if config.guidance == "none":
        return "effective attention weight: none (guidance none has no attention loss)"
    used = config.attention_weight if weight is None else weight
    how = f"calibrated to attention_fraction {config.attention_fraction:g}" if config.calibrated else "fixed"
    return f"effective attention weight: {used:.6g} ({how})"


def _progress_text(node_id, text: str) -> None:
    try:
        from server import PromptServer

        if node_id is not None and PromptServer.instance is not None:
            PromptServer.instance.send_progress_text(text, node_id)
    except Exception:  # progress text is a courtesy; never fail training over it
        log.debug("textloc: progress text not sent", exc_info=True)


def _report_cancel(node_id, name: str, checkpoints, steps_done: int, steps: int) -> None:
    """Log (and show on the node) where a cancelled training's last checkpoint is."""
    where = f"{paths.shown(checkpoints)} (step {steps_done} of {steps})" if steps_done else "nowhere (no step finished)"
    message = f"textloc: training '{name}' cancelled; last checkpoint kept in {where}. Queue again with resume on to continue."
    log.warning(message)
    _progress_text(node_id, message)


def _lever_weight(name: str, maximum: float, step: float):
    """An optional weight widget of a loss lever, from 0 to ``maximum``, defaulting to the
    TrainConfig field of the same name."""
    return TRAIN_NODE.input(
        io.Float, name, default=getattr(TrainConfig, name), min=0.0, max=maximum, step=step, round=False, optional=True
    )


def _train_inputs() -> list:
    """Train's inputs, in the order saved workflows store their widgets: the model and concept
    set; what the run is; optional: training side, fixed attention weight, resuming, large sides
    and replacing files; how the attention weight is set, memory options, the masked loss, the guided resolutions, text
    preservation, outside preservation."""
    return [
        TRAIN_NODE.input(io.Model, "model"),
        TRAIN_NODE.input(io.Clip, "clip"),
        TRAIN_NODE.input(io.Vae, "vae"),
        TRAIN_NODE.input(CONCEPTS, "concepts"),
        TRAIN_NODE.input(io.Combo, "guidance", options=list(GUIDANCE_METHODS), default="hard"),
        TRAIN_NODE.input(io.Int, "steps", default=400, min=1, max=100000),
        TRAIN_NODE.input(io.Float, "learning_rate", default=1e-5, min=1e-7, max=1e-2, step=1e-6, round=False),
        TRAIN_NODE.input(io.Int, "batch", default=2, min=1, max=16),
        TRAIN_NODE.input(io.Int, "prior_images", default=0, min=0, max=1000),
        TRAIN_NODE.seed(),
        TRAIN_NODE.input(io.Int, "checkpoint_every", default=50, min=1, max=100000),
        TRAIN_NODE.input(io.String, "adapter_name", default="textloc_adapter"),
        TRAIN_NODE.input(io.Int, "resolution", default=0, min=0, max=2048, step=8, optional=True),
        TRAIN_NODE.input(io.Float, "attention_weight", default=1.0, min=0.0, max=100.0, step=0.1, optional=True),
        TRAIN_NODE.input(io.Boolean, "resume", default=True, optional=True),
        TRAIN_NODE.input(io.Boolean, "allow_large_resolution", default=False, optional=True),
        TRAIN_NODE.input(io.Boolean, "overwrite", default=False, optional=True),
        TRAIN_NODE.input(
            io.Combo, "attention_weight_mode", options=list(ATTENTION_WEIGHT_MODES), default="calibrated", optional=True
        ),
        TRAIN_NODE.input(
            io.Float, "attention_fraction", default=1.0, min=0.001, max=10.0, step=0.01, round=False, optional=True
        ),
        TRAIN_NODE.input(io.Boolean, "gradient_checkpointing", default=False, optional=True),
        TRAIN_NODE.input(io.Combo, "mixed_precision", options=list(MIXED_PRECISIONS), default="auto", optional=True),
        TRAIN_NODE.input(io.Combo, "optimizer", options=list(OPTIMIZERS), default="adamw", optional=True),
        _lever_weight("unmasked_weight", maximum=1.0, step=0.05),
        TRAIN_NODE.input(
            io.Combo, "map_levels", options=list(NAMED_MAP_LEVELS), default=DEFAULT_MAP_LEVELS, optional=True
        ),
        _lever_weight("preservation_weight", maximum=10000.0, step=1.0),
        _lever_weight("outside_preservation_weight", maximum=100.0, step=0.1),
    ]


class TextLocTrain(io.ComfyNode):
    """Teach new tokens (and the attention K/V weights) from a concept set."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return TRAIN_NODE.schema(
            outputs=[named(ADAPTER, "adapter"), named(io.String, "report")],
            is_output_node=True,
            hidden=[io.Hidden.unique_id],
            inputs=_train_inputs(),
        )

    @classmethod
    def execute(
        cls,
        model,
        clip,
        vae,
        concepts,
        adapter_name,
        resume=True,
        allow_large_resolution=False,
        overwrite=False,
        **widgets,
    ) -> io.NodeOutput:
        config = config_from_widgets(widgets)
        denoiser = training_denoiser(model, vae)  # refuses a model the pack cannot train
        # decided before the files are planned, so an existing adapter is compared with what
        # this run records (Flux and SD3 train without text preservation)
        config = preservation.applicable(config, denoiser)
        name = paths.check_adapter_name(adapter_name.strip())
        checked = check_inputs(denoiser, model, clip, concepts, config, allow_large_resolution)
        files, checkpoints = plan_outputs(name, model, concepts, config, resume, overwrite)
        progress = TrainProgress(cls.hidden.unique_id, config)
        result, adapter, encoder_sizes = run_training(model, clip, vae, checked, config, checkpoints, resume, progress)
        if result.stopped_early:
            _report_cancel(progress.node_id, name, checkpoints, result.steps_done, config.steps)
            end_prompt_cancelled()
        write_files(files, adapter, encoder_sizes)
        report = train_report(files, adapter, result, progress.history, config, name)
        log.info("textloc: %s", report.replace("\n", "; "))
        return io.NodeOutput(adapter, report, ui=ui.PreviewText(report))


def config_from_widgets(widgets: dict) -> TrainConfig:
    """The run's TrainConfig from the Train widgets that set it (``TrainConfig.from_widgets``, the
    one place widget names become config fields), refusing non-finite numbers first."""
    numbers = {k: v for k, v in widgets.items() if isinstance(v, float)}
    require_finite(**numbers)
    return TrainConfig.from_widgets(**widgets)


def check_inputs(
    denoiser, model, clip, concepts, config: TrainConfig, allow_large_resolution: bool
) -> CheckedConceptSet:
    """Every check of the inputs that needs no model loaded, before any work: the concept set
    (with the CLIP tokenizer's vocabulary check and the side rule of ``denoiser``, the model's
    ``training_denoiser``; the trainer takes the checked set and does not check it again) and
    the training side."""
    rule = size_multiple(denoiser)
    placer = IdentifierPlacer.for_clip(clip)
    checked = validate_concept_set(
        concepts, vocabulary_check=placer.check_new_token, resolution=config.resolution, size_multiple=rule
    )
    check_resolution(model, concepts, config.resolution or 0, allow_large_resolution)
    return checked


def plan_outputs(name: str, model, concepts, config: TrainConfig, resume: bool, overwrite: bool):
    """(the files to write, the checkpoint folder): every name, and what may be replaced,
    decided before any work."""
    files = plan_files(name, [c.name for c in concepts.concepts])
    check_replace(files, concepts, config.to_json(), lambda: base_fingerprint_and_weights(model)[0], overwrite)
    disk_budget.make_room(name)
    # one folder per training data: resuming never mixes two different photo/mask sets
    checkpoints = paths.checkpoint_dir(name) / concepts.data_hash()[:12]
    if not resume and checkpoints.exists() and any(checkpoints.iterdir()):
        raise ValueError(
            f"adapter_name: {name!r} already has checkpoints in {paths.shown(checkpoints)}; turn resume on to continue "
            "them, or pick another adapter_name"
        )
    return files, checkpoints


class TrainProgress:
    """The node's progress: a ComfyUI progress bar showing the loss curve, and the losses as
    progress text. ``on_step`` is the trainer's hook."""

    def __init__(self, node_id, config: TrainConfig):
        import comfy.utils

        self.node_id = node_id
        self.bar = comfy.utils.ProgressBar(config.steps, node_id=node_id)
        self.history: list[dict[str, float]] = []
        if config.calibrated:  # the batches before step 1 show no step progress of their own
            _progress_text(
                node_id,
                f"calibrating the attention weight on {config.calibration_batches} batches "
                "(a resumed run reuses the weight it recorded)",
            )

    def on_step(self, report) -> None:
        self.history.append(report.losses)
        text = f"step {report.step}/{report.total}: " + ", ".join(f"{k} {v:.4f}" for k, v in report.losses.items())
        _progress_text(self.node_id, text)
        with cancel_as_core("the progress update"):  # ComfyUI's progress hook raises on Cancel
            self.bar.update_absolute(report.step, report.total, ("JPEG", loss_curve(self.history), 256))


def run_training(model, clip, vae, checked, config: TrainConfig, checkpoints, resume: bool, progress: TrainProgress):
    """(result, adapter, encoder sizes) of ``loop.train`` on ComfyUI's objects and the
    ``CheckedConceptSet`` of ``check_inputs``; memory is handed back to ComfyUI however it ends."""
    import comfy.model_management as mm

    try:
        with training_session(model, clip, vae) as bundle:
            result = loop.train(
                bundle,
                checked,
                config,
                checkpoint_dir=checkpoints,
                resume=resume,
                on_step=progress.on_step,
                should_stop=stop_requested,
                prior_cache_dir=paths.prior_cache_dir(),
            )
            return result, make_adapter(result, checked.concept_set, bundle), bundle.text.encoder_sizes
    except loop.TrainingDiverged as exc:
        raise ValueError(f"{exc} Checkpoints: {checkpoints}") from None
    finally:
        gc.collect()
        mm.soft_empty_cache()


def train_report(files, adapter, result, history, config: TrainConfig, name: str) -> str:
    """The node's text output: where each file went, the steps and last losses, the weight used."""
    losses = history[-1] if history else (result.history[-1] if result.history else {})
    return "\n".join(
        [f"adapter: {paths.shown(files.adapter)}", f"lora (LoraLoaderModelOnly): {paths.shown(files.lora)}"]
        + [
            f"embedding for {c['name']}: embedding:{paths.embedding_name(name, c['name'])} (token {c['token']})"
            for c in adapter.metadata.concepts
        ]
        + [f"steps: {result.steps_done}, last losses: " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items())]
        + [attention_weight_line(config, result.effective_attention_weight)]
    )
