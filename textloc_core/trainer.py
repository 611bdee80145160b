"""One training loop for every method (hard, soft, none): Textual Localization / Custom Diffusion.

Trainable: an additive delta on W_K and W_V of every attn2 layer (``KVDeltaInjector``) and
one new embedding per concept token. Each step, in one UNet forward over [instance; prior]:

    loss = mse(instance) + lambda_prior * mse(prior) + lambda_attn * attention_loss(maps, masks)

where the maps are the concept tokens' cross-attention probabilities captured from that same
forward (instance rows only). With method "none" nothing is routed or captured, so the
baseline costs exactly a Custom Diffusion step.

Reproducibility: each step's batch choice, timesteps and noise come from a generator seeded
by (seed, step), so a run resumed from a checkpoint continues bit-identically on CPU without
replaying any RNG.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from . import schedule
from .attention import AttentionRouter, KVDeltaInjector, find_cross_attention
from .backends.base import ModelBundle
from .concepts import ConceptSet
from .config import TrainConfig
from .guidance import attention_loss
from .maps import choose_layers, slot_layout, token_maps
from .masks import mask_to_grid


@dataclass
class StepReport:
    """What ``on_step`` receives after every optimiser step."""

    step: int
    """1-based number of the step just done."""
    total: int
    losses: dict[str, float]
    """"loss" (total), "instance", "prior", "attention"."""
    seconds: float


@dataclass
class TrainResult:
    """What training produced: enough to build an adapter."""

    kv_deltas: dict[str, torch.Tensor]
    """Canonical attn2 name + ".to_k"/".to_v" -> float32 delta (add to the base weight)."""
    token_embeddings: dict[str, torch.Tensor]
    """Identifier token -> (n_vectors, D) float32 embedding."""
    history: list[dict[str, float]]
    stopped_early: bool
    steps_done: int
    fingerprint: str = ""
    config: TrainConfig | None = None
    prompts: list[str] = field(default_factory=list)
    """The instance prompts used, one per training image."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def build_prompt(config: TrainConfig, concept_set: ConceptSet, names: list[str]) -> str:
    """The instance prompt naming ``names`` (in concept-set order), from the config templates."""
    phrases = [
        config.concept_phrase.format(token=c.token, class_word=c.class_word)
        for c in concept_set.concepts
        if c.name in names
    ]
    return config.instance_prompt.format(concepts=config.concept_joiner.join(phrases))


def step_generator(seed: int, step: int) -> torch.Generator:
    """The RNG of one step, a pure function of (seed, step) so resume needs no replay."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7_919 + 1) % (2**63))


def attn2_query_counts(denoiser, latents: torch.Tensor, context: torch.Tensor, dtype: torch.dtype) -> dict[str, int]:
    """Query pixels of every attn2 layer (canonical name) for latents of this size: one
    routed forward without gradient, so levels are found by walking, never hard-coded."""
    router = AttentionRouter(layers=None, token_slots=torch.zeros(1, 1, dtype=torch.long), keep_grad=False)
    with torch.no_grad(), denoiser.route_attention(router):
        t = torch.zeros(1, dtype=torch.long, device=latents.device)
        denoiser.predict(latents[:1].to(dtype), t, context[:1].to(dtype))
    return {m.layer: m.probs.shape[1] for m in router.captured}


def epoch_indices(seed: int, step: int, n: int, batch: int) -> torch.Tensor:
    """Instance images of ``step``, as a shuffling data loader would give them: each epoch a
    fresh permutation of the ``n`` images (seeded by (seed, epoch)), consumed ``batch`` at a
    time, so every image is seen equally often and resume needs no replay."""
    picks = []
    for position in range(step * batch, (step + 1) * batch):
        epoch, offset = divmod(position, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed((seed * 1_000_003 + epoch * 104_729 + 7) % (2**63)))
        picks.append(int(order[offset]))
    return torch.tensor(picks, dtype=torch.long)


def _amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for plain fp32. "auto": bf16 (else fp16) on CUDA, fp32 elsewhere;
    "bf16" also works on CPU (slow, but it is how the autocast path is tested without a GPU)."""
    mode = config.mixed_precision
    if mode not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"mixed_precision: {mode!r} is not one of auto, fp32, bf16, fp16")
    if mode == "fp32" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if mode == "fp16" and device.type != "cuda":
        raise ValueError("mixed_precision: fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def _adamw(config: TrainConfig):
    """torch's AdamW, or bitsandbytes' 8-bit AdamW when ``use_8bit_adam`` (CUDA only)."""
    if not config.use_8bit_adam:
        return torch.optim.AdamW
    try:
        import bitsandbytes
    except ImportError:
        raise ValueError("use_8bit_adam: bitsandbytes is not installed; pip install bitsandbytes or turn it off") from None
    return bitsandbytes.optim.AdamW8bit


def _prepare_images(concept_set: ConceptSet, config: TrainConfig, multiple: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, H, W) images and (N, K, H, W) masks in concept order, checked and sized."""
    if not concept_set.concepts:
        raise ValueError("concept set: no concepts to train; add at least one Concept")
    if not concept_set.images:
        raise ValueError("concept set: no images; give at least one photo with a mask")
    names = [c.name for c in concept_set.concepts]
    tokens = [c.token for c in concept_set.concepts]
    for label, values in (("name", names), ("token", tokens)):
        if len(set(values)) != len(values):
            raise ValueError(f"concept set: concept {label}s {values} repeat; every concept needs its own {label}")
    images, masks = [], []
    for index, item in enumerate(concept_set.images):
        where = f"image {index}" + (f" ({item.source})" if item.source else "")
        unknown = set(item.masks) - set(names)
        if unknown:
            raise ValueError(f"{where}: masks for {sorted(unknown)} but the concepts are {names}; drop them or add the concepts")
        if not item.masks:
            raise ValueError(f"{where} has no concept mask: every training image must show at least one concept; mask it or drop the image")
        image, item_masks = item.image, item.masks
        if config.resolution is not None and tuple(image.shape[-2:]) != (config.resolution,) * 2:
            from .imaging import fit_pair

            image, item_masks = fit_pair(image, item_masks, config.resolution)
        for name, mask in item_masks.items():
            if tuple(mask.shape) != tuple(image.shape[-2:]):
                raise ValueError(f"{where}: mask of concept {name!r} is {tuple(mask.shape)}, the image {tuple(image.shape[-2:])}")
            if float(mask.max()) <= 0:
                raise ValueError(f"{where}: mask of concept {name!r} is empty; draw the {name} in the mask or drop the image")
        images.append(image.float())
        blank = torch.zeros(image.shape[-2:])
        masks.append(torch.stack([item_masks.get(n, blank).float() for n in names]))
    sizes = {tuple(i.shape[-2:]) for i in images}
    if len(sizes) != 1:
        raise ValueError(f"images have different sizes {sorted(sizes)}; set TrainConfig.resolution to train on one size")
    (height, width), = sizes
    if height % multiple or width % multiple:
        raise ValueError(f"image size {height}x{width} must be a multiple of {multiple} pixels for this model; set resolution")
    return torch.stack(images), torch.stack(masks)


class _Run:
    """State of one training run; ``step`` is the readable heart of the loop."""

    def __init__(self, bundle: ModelBundle, concept_set: ConceptSet, config: TrainConfig):
        self.bundle, self.config, self.concept_set = bundle, config, concept_set
        self.device = bundle.device
        self.text, self.denoiser = bundle.text, bundle.denoiser
        self.amp = _amp_dtype(config, self.device)
        self.concepts = concept_set.concepts
        self.tokens = [c.token for c in self.concepts]
        n_down = sum(1 for _ in _downsamplers(self.denoiser.unet))
        images, self.masks = _prepare_images(concept_set, config, self.denoiser.vae_scale_factor * 2**n_down)
        for token in self.tokens:
            self.text.check_token(token)
        self.embeddings = {
            c.token: torch.nn.Parameter(self.text.initial_embedding(c.initializer).to(self.device, torch.float32))
            for c in self.concepts
        }
        names = [[c.name for c in self.concepts if c.name in item.masks] for item in concept_set.images]
        self.prompts = [build_prompt(config, concept_set, n) for n in names]
        with torch.no_grad():
            self.latents = torch.cat(
                [self.denoiser.encode_images(images[i : i + 8].to(self.device)).float() for i in range(0, len(images), 8)]
            )
        self.latent_hw = tuple(self.latents.shape[-2:])
        self.prior_latents = self.prior_context = None  # set by setup_prior
        self.guided = config.method != "none" and config.lambda_attn > 0
        self.layers = self._probe_layers() if self.guided else set()
        optimizer_class = _adamw(config)
        self.injector = KVDeltaInjector(self.denoiser.unet)  # last: nothing below can fail and leak its hooks
        # One router for the whole run, installed by ``hooks()``: it must stay in place through
        # backward, where gradient checkpointing re-runs the attn2 calls.
        self.router = AttentionRouter(layers=self.layers, keep_grad=True) if self.guided else None
        params = self.injector.parameters() + list(self.embeddings.values())
        self.optimizer = optimizer_class(
            params,
            lr=config.effective_learning_rate,
            betas=(config.adam_beta1, config.adam_beta2),
            eps=config.adam_epsilon,
            weight_decay=config.weight_decay,
        )
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None

    def setup_prior(self, cache_dir: Path | None, should_stop: Callable[[], bool] | None = None) -> bool:
        """Generate (or read from the cache) the class-prior latents; False when cancelled.

        Runs while the K/V deltas are still zero, so the base model draws them."""
        config = self.config
        if not config.uses_prior:
            return True
        from .prior import PriorCancelled, prior_latents

        latents, prompts = [], []
        for class_word in dict.fromkeys(c.class_word for c in self.concepts):
            prompt = config.class_prompt.format(class_word=class_word)
            try:
                latents.append(
                    prior_latents(
                        self.bundle, prompt, config.prior_images_per_class, self.latent_hw, config,
                        cache_dir=cache_dir, should_stop=should_stop,
                    )
                )
            except PriorCancelled:
                return False
            prompts.append(prompt)
        self.prior_latents = torch.cat(latents).to(self.device, torch.float32)
        self.prior_prompt_index = torch.cat([torch.full((len(x),), i) for i, x in enumerate(latents)])
        with torch.no_grad():  # prior prompts hold no trainable token: encode once
            self.prior_context = self.text.encode(prompts, {}).context.detach()
        return True

    def _probe_layers(self) -> set[str]:
        """The layers ``map_levels`` asks for; all others stay on the fused attention path."""
        with torch.no_grad():
            context = self.text.encode(self.prompts[:1], {t: e.detach() for t, e in self.embeddings.items()}).context
        counts = attn2_query_counts(self.denoiser, self.latents[:1], context, self.bundle.compute_dtype)
        return choose_layers(counts, self.config.map_levels)

    def hooks(self) -> contextlib.ExitStack:
        """Context keeping the K/V deltas (and, when guided, the attention routing) installed;
        on exit the model is exactly the base model again."""
        stack = contextlib.ExitStack()
        stack.callback(self.injector.remove)
        if self.router is not None:
            stack.enter_context(self.denoiser.route_attention(self.router))
        if self.config.gradient_checkpointing:
            if not hasattr(self.denoiser, "gradient_checkpointing"):
                stack.close()
                raise ValueError("gradient_checkpointing: this model backend cannot recompute activations; turn it off")
            stack.enter_context(self.denoiser.gradient_checkpointing())
        return stack

    def _draw(self, step: int):
        """Everything random about one step, from (seed, step) alone."""
        g = step_generator(self.config.seed, step)
        inst = epoch_indices(self.config.seed, step, len(self.latents), self.config.instance_batch)
        batch = len(inst)
        prior = None
        if self.prior_latents is not None:
            prior = torch.randint(len(self.prior_latents), (self.config.prior_batch,), generator=g)
        total = batch + (0 if prior is None else len(prior))
        timesteps = torch.randint(0, schedule.TRAIN_TIMESTEPS, (total,), generator=g)
        noise = torch.randn((total, *self.latents.shape[1:]), generator=g)
        return inst, prior, timesteps, noise

    def losses(self, inst, prior, timesteps, noise) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """The loss terms of one forward over [instance rows ``inst``; prior rows ``prior``],
        and the instance rows' (B, K, h, w) token maps (None when not guided)."""
        config, dtype, dev = self.config, self.bundle.compute_dtype, self.device
        n_inst = len(inst)
        prompts = [self.prompts[i] for i in inst.tolist()]
        unique = list(dict.fromkeys(prompts))  # encode each distinct prompt once per step
        with torch.autocast(dev.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            encoded = self.text.encode(unique, self.embeddings)
            context = encoded.context[torch.tensor([unique.index(p) for p in prompts], device=encoded.context.device)]
            positions = [encoded.token_positions[unique.index(p)] for p in prompts]
            latents = self.latents[inst.to(dev)]
            if prior is not None:
                latents = torch.cat([latents, self.prior_latents[prior.to(dev)]])
                context = torch.cat([context, self.prior_context[self.prior_prompt_index[prior].to(dev)].to(context.dtype)])
            noise, timesteps = noise.to(dev), timesteps.to(dev)
            noisy = schedule.add_noise(latents, noise, timesteps)
            router = self.router
            if router is not None:
                # Prior rows get empty slots; only instance rows feed the attention loss.
                layout = slot_layout(positions + [{}] * (len(latents) - n_inst), self.tokens)
                router.clear()
                router.token_slots = layout.slots.to(dev)
            pred = self.denoiser.predict(noisy.to(dtype), timesteps, context.to(dtype))
        pred = pred.float()
        target = schedule.training_target(self.denoiser.prediction_type, latents, noise, timesteps)
        masks = self.masks[inst].to(dev)
        losses = {"instance": self._instance_loss(pred[:n_inst], target[:n_inst], masks)}
        losses["prior"] = F.mse_loss(pred[n_inst:], target[n_inst:]) if prior is not None else pred.sum() * 0.0
        maps = None
        if router is not None:
            maps = token_maps(
                router.captured, layout, self.latent_hw, rows=slice(0, n_inst),
                map_size=config.map_size, normalize=config.normalize_maps,
            )
            present = layout.present[:n_inst].to(dev)
            losses["attention"] = attention_loss(config.method, maps, mask_to_grid(masks, tuple(maps.shape[-2:])), present)
        else:
            losses["attention"] = pred.sum() * 0.0
        losses["loss"] = losses["instance"] + config.lambda_prior * losses["prior"] + config.lambda_attn * losses["attention"]
        return losses, maps

    def step(self, step: int) -> dict[str, float]:
        """One optimiser step (0-based ``step``); returns the losses as floats."""
        losses, _ = self.losses(*self._draw(step))
        total = losses["loss"]
        if not torch.isfinite(total):
            raise TrainingDiverged(
                f"step {step + 1}: loss is {float(total.detach())} ({ {k: float(v.detach()) for k, v in losses.items()} }); "
                "training stopped and the last good checkpoint is kept. Check the images for NaN, lower the "
                "learning rate, or use mixed_precision='fp32'."
            )
        self._backward(total)
        if self.router is not None:
            self.router.clear()  # drop this step's maps (and any recomputed during backward)
        return {k: float(v.detach()) for k, v in losses.items()}

    def _instance_loss(self, pred: torch.Tensor, target: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        if not self.config.masked_denoise_loss:
            return F.mse_loss(pred, target)
        # Break-A-Scene: only the pixels of the named concepts count.
        union = mask_to_grid(masks.amax(dim=1), tuple(pred.shape[-2:])).unsqueeze(1)
        return ((pred - target) ** 2 * union).sum() / (union.sum() * pred.shape[1]).clamp_min(1e-8)

    def _backward(self, total: torch.Tensor) -> None:
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            total.backward()
        if self.config.max_grad_norm and self.config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

    def trainables(self) -> dict[str, torch.Tensor]:
        """Canonical-name K/V deltas and token embeddings (the checkpointed state)."""
        names = {f"{n}.{p}": f"{self.denoiser.canonical_layer_name(n)}.{p}" for n in self.injector.layers for p in ("to_k", "to_v")}
        out = {f"kv:{names[k]}": v for k, v in self.injector.deltas.items()}
        out.update({f"emb:{t}": e for t, e in self.embeddings.items()})
        return out

    def load_trainables(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for key, param in self.trainables().items():
                if key not in tensors:
                    raise ValueError(f"checkpoint: {key!r} is missing; it was made for another model or concept set")
                param.copy_(tensors[key].to(param))


def _downsamplers(unet: torch.nn.Module):
    """Modules that halve the latent grid (diffusers Downsample2D / LDM Downsample)."""
    return (m for m in unet.modules() if type(m).__name__ in ("Downsample2D", "Downsample"))


def train(
    bundle: ModelBundle,
    concept_set: ConceptSet,
    config: TrainConfig,
    *,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    on_step: Callable[[StepReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    prior_cache_dir: Path | None = None,
) -> TrainResult:
    """Train ``concept_set``'s tokens and the attn2 K/V deltas of ``bundle``; see the module doc.

    The base model is left bit-identical (hooks removed, requires_grad restored). Works
    when called under ``torch.inference_mode`` (ComfyUI does). ``should_stop`` is polled
    before every step; a stop returns the partial result with ``stopped_early=True``.
    With ``checkpoint_dir`` a checkpoint is written every ``config.checkpoint_every`` steps
    and at the end; ``resume=True`` continues from the latest one there.
    """
    with torch.inference_mode(False), torch.enable_grad():
        frozen = [(p, p.requires_grad) for m in _models(bundle) for p in m.parameters()]
        for p, _ in frozen:
            p.requires_grad_(False)
        try:
            return _train(bundle, concept_set, config, checkpoint_dir, resume, on_step, should_stop, prior_cache_dir)
        finally:
            for p, flag in frozen:
                p.requires_grad_(flag)


def _models(bundle: ModelBundle) -> list[torch.nn.Module]:
    """Every torch module a backend holds (UNet, VAE, text encoder...), whatever its attribute
    names, so training can freeze them all and restore their flags afterwards."""
    found: dict[int, torch.nn.Module] = {id(bundle.denoiser.unet): bundle.denoiser.unet}
    for owner in (bundle.text, bundle.denoiser):
        for value in vars(owner).values():
            if isinstance(value, torch.nn.Module):
                found.setdefault(id(value), value)
    return list(found.values())


def _train(bundle, concept_set, config, checkpoint_dir, resume, on_step, should_stop, prior_cache_dir) -> TrainResult:
    ckpt = None
    if checkpoint_dir is not None:
        from . import checkpoint as ckpt  # the adapter engineer's atomic checkpoint files

    run = _Run(bundle, concept_set, config)
    try:
        prior_ready = run.setup_prior(prior_cache_dir, should_stop)
    except BaseException:
        run.injector.remove()
        raise
    history: list[dict[str, float]] = []
    stopped = not prior_ready
    with run.hooks():
        start = 0
        if resume and checkpoint_dir is not None and prior_ready:
            state = ckpt.load_latest_checkpoint(Path(checkpoint_dir), config_json=config.to_json())
            if state is not None:
                run.load_trainables(state.tensors)
                run.optimizer.load_state_dict(state.optimizer_state)
                start, history = state.step, list(state.extra.get("history", []))
        for step in range(start, config.steps) if prior_ready else ():
            if should_stop is not None and should_stop():
                stopped = True
                break
            began = time.perf_counter()
            try:
                losses = run.step(step)
            except Exception:
                # A host may abort a step from inside the model once asked to stop (ComfyUI
                # 0.33 checks its interrupt flag in every layer). The step had not updated
                # anything yet, so the steps before it are kept like any other stop.
                if should_stop is not None and should_stop():
                    stopped = True
                    break
                raise
            history.append(losses)
            done = step + 1
            if checkpoint_dir is not None and (done % max(1, config.checkpoint_every) == 0 or done == config.steps):
                _save(ckpt, checkpoint_dir, done, run, config, history)
            if on_step is not None:
                on_step(StepReport(done, config.steps, losses, time.perf_counter() - began))
        if stopped and checkpoint_dir is not None and len(history) > start:
            _save(ckpt, checkpoint_dir, len(history), run, config, history)
        trainables = run.trainables()
        return TrainResult(
            kv_deltas={k[3:]: v.detach().float().cpu().clone() for k, v in trainables.items() if k.startswith("kv:")},
            token_embeddings={k[4:]: v.detach().float().cpu().clone() for k, v in trainables.items() if k.startswith("emb:")},
            history=history,
            stopped_early=stopped,
            steps_done=len(history),
            fingerprint=bundle.fingerprint,
            config=config,
            prompts=list(run.prompts),
        )


def _save(ckpt, checkpoint_dir, step, run: _Run, config: TrainConfig, history) -> None:
    # No RNG state: every step's randomness is derived from (seed, step).
    ckpt.save_checkpoint(
        Path(checkpoint_dir),
        step,
        {k: v.detach() for k, v in run.trainables().items()},
        run.optimizer.state_dict(),
        None,
        config.to_json(),
        extra={"history": history},
    )


def map_mask_error(
    bundle: ModelBundle,
    concept_set: ConceptSet,
    config: TrainConfig,
    result: TrainResult | None = None,
    *,
    timesteps: tuple[int, ...] = (200, 500, 800),
    seed: int = 1234,
) -> float:
    """Mean hard-guidance error (map - mask)^2 over every image and present concept, with
    ``result``'s deltas and tokens applied (None: the untrained initial tokens), at fixed
    timesteps and noise, so two results can be compared: how well each token's map sits
    on its mask."""
    probe = replace(config, method="hard", lambda_attn=1.0, lambda_prior=0.0)
    with torch.inference_mode(False), torch.no_grad():
        run = _Run(bundle, concept_set, probe)
        with run.hooks():
            if result is not None:
                tensors = {f"kv:{k}": v for k, v in result.kv_deltas.items()}
                tensors.update({f"emb:{k}": v for k, v in result.token_embeddings.items()})
                run.load_trainables(tensors)
            inst = torch.arange(len(run.latents))
            errors = []
            for t in timesteps:
                noise = torch.randn(run.latents.shape, generator=torch.Generator().manual_seed(seed + t))
                losses, _ = run.losses(inst, None, torch.full((len(inst),), t), noise)
                errors.append(float(losses["attention"]))
    return sum(errors) / len(errors)
