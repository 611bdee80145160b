"""One training step: draw the batch, one UNet forward, the loss terms, one optimiser update.

Each step, in one forward over [instance; prior]:

    loss = mse(instance) + lambda_prior * mse(prior) + attention_weight * attention_loss(maps, masks)
           + preservation_weight * preservation(K/V deltas)
           + outside_preservation_weight * mse(instance, base model) outside the masks

where attention_weight is ``run.effective_attention_weight``: the config's, or with
``attention_weight_mode="calibrated"`` the one ``calibrate_attention_weight`` sets before the
first step, ``attention_fraction * ||grad denoise|| / ||grad attention||`` on the trainables,
averaged over the first ``calibration_batches`` steps' batches.

where the maps are the concept tokens' cross-attention probabilities captured from that same
forward (instance rows only). Everything random about a step comes from (seed, step) alone,
so a resumed run continues bit-identically without replaying any RNG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..attention.guidance import attention_loss
from ..attention.maps import slot_layout, token_maps
from ..data.masks import mask_to_grid
from ..sampling import schedule
from . import phases
from .other_objects import draw_other_objects, with_other_objects
from .outside_preservation import base_prediction, outside_loss
from .setup import TrainingRun, optimizer_class
from .union import draw_subsets, subset_rows, union_active


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def step_generator(seed: int, step: int) -> torch.Generator:
    """The RNG of one step, a pure function of (seed, step) so resume needs no replay."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7_919 + 1) % (2**63))


def epoch_indices(seed: int, step: int, n: int, batch: int) -> torch.Tensor:
    """Instance images of ``step``, as a shuffling data loader would give them: each epoch a
    fresh permutation of the ``n`` images (seeded by (seed, epoch)), consumed ``batch`` at a
    time, so every image is seen equally often and resume needs no replay."""
    picks = []
    for position in range(step * batch, (step + 1) * batch):
        epoch, offset = divmod(position, n)
        order = torch.randperm(
            n, generator=torch.Generator().manual_seed((seed * 1_000_003 + epoch * 104_729 + 7) % (2**63))
        )
        picks.append(int(order[offset]))
    return torch.tensor(picks, dtype=torch.long)


def draw(run: TrainingRun, step: int):
    """(instance rows, prior rows or None, timesteps, noise, concept subsets or None, other
    objects or None) of ``step``, from (seed, step) alone; the subsets (``union.draw_subsets``)
    and then the other objects (``other_objects``) are drawn last, each only when its lever is
    on, so runs without them draw exactly what they always did."""
    config = run.config
    g = step_generator(config.seed, step)
    inst = epoch_indices(config.seed, step, len(run.latents), config.instance_batch)
    prior = None
    if run.prior_latents is not None:
        prior = torch.randint(len(run.prior_latents), (config.prior_batch,), generator=g)
    total = len(inst) + (0 if prior is None else len(prior))
    timesteps = torch.randint(0, schedule.TRAIN_TIMESTEPS, (total,), generator=g)
    noise = torch.randn((total, *run.latents.shape[1:]), generator=g)
    subsets = draw_subsets(run, inst, g) if union_active(run) else None
    rate = config.other_object_rate
    others = draw_other_objects(rate, len(inst), g) if rate > 0 else None
    return inst, prior, timesteps, noise, subsets, others


def losses(
    run: TrainingRun, inst, prior, timesteps, noise, subsets=None, others=None
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """The loss terms of one forward over [instance rows ``inst``; prior rows ``prior``],
    and the instance rows' (B, K, h, w) token maps (None when not guided). ``subsets``: the
    concepts each instance row names (union sampling), else every concept its photo shows;
    ``others``: the object each row's prompt also names, or None (``other_objects``)."""
    config, dtype, dev = run.config, run.bundle.compute_dtype, run.device
    denoiser = run.bundle.denoiser
    n_inst = len(inst)
    if subsets is None:
        prompts, masks = [run.prompts[i] for i in inst.tolist()], run.masks[inst]
    else:
        prompts, masks = subset_rows(run, inst, subsets)
    if others is not None:
        prompts = with_other_objects(prompts, others)
    unique = list(dict.fromkeys(prompts))  # encode each distinct prompt once per step
    with torch.autocast(dev.type, dtype=run.amp or torch.float32, enabled=run.amp is not None):
        encoded = run.bundle.text.encode(unique, run.trainables.token_embeddings)
        which = torch.tensor([unique.index(p) for p in prompts], device=encoded.context.device)
        context = encoded.context[which]
        pooled = None if encoded.pooled is None else encoded.pooled[which]
        positions = [encoded.token_positions[unique.index(p)] for p in prompts]
        latents = run.latents[inst.to(dev)]
        if prior is not None:
            latents = torch.cat([latents, run.prior_latents[prior.to(dev)]])
            prior_rows = run.prior_prompt_index[prior].to(dev)
            context = torch.cat([context, run.prior_context[prior_rows].to(context.dtype)])
            if pooled is not None:
                pooled = torch.cat([pooled, run.prior_pooled[prior_rows].to(pooled.dtype)])
        noise, timesteps = noise.to(dev), timesteps.to(dev)
        noisy, target = schedule.noised_and_target(denoiser, latents, noise, timesteps)
        base = None
        if config.outside_preservation_weight > 0:
            # before the trained forward: the base forward must not touch this step's maps
            base = base_prediction(run, noisy[:n_inst], timesteps[:n_inst], prompts)
        router = run.router
        if router is not None:
            # Prior rows get empty slots; only instance rows feed the attention loss.
            layout = slot_layout(positions + [{}] * (len(latents) - n_inst), run.tokens)
            router.clear()
            router.token_slots = layout.slots.to(dev)
        pred = denoiser.predict(noisy.to(dtype), timesteps, context.to(dtype), pooled)
    pred = pred.float()
    masks = masks.to(dev)
    terms = {"instance": instance_loss(config.unmasked_weight, pred[:n_inst], target[:n_inst], masks)}
    terms["prior"] = F.mse_loss(pred[n_inst:], target[n_inst:]) if prior is not None else pred.sum() * 0.0
    terms["attention"], maps = (
        attention_term(run, layout, masks, n_inst) if router is not None else (pred.sum() * 0.0, None)
    )
    terms["preservation"] = (
        run.preservation.loss(run.trainables.kv_deltas) if run.preservation is not None else pred.sum() * 0.0
    )
    terms["outside"] = outside_loss(pred[:n_inst], base, masks) if base is not None else pred.sum() * 0.0
    terms["loss"] = total_loss(run, terms)
    return terms, maps


def attention_term(run: TrainingRun, layout, masks: torch.Tensor, n_inst: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the unweighted attention loss, the instance rows' (B, K, h, w) token maps) from the maps
    ``run.router`` captured in this step's forward, ``layout`` its token slots."""
    config = run.config
    maps = token_maps(
        run.router.captured,
        layout,
        run.latent_hw,
        rows=slice(0, n_inst),
        map_size=config.map_size,
        normalize=config.normalize_maps,
    )
    present = layout.present[:n_inst].to(run.device)
    grid = mask_to_grid(masks, tuple(maps.shape[-2:]))
    return attention_loss(config.guidance, maps, grid, present), maps


def total_loss(run: TrainingRun, terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """The weighted sum of a step's loss terms (the module docstring's formula)."""
    return (
        terms["instance"]
        + run.config.lambda_prior * terms["prior"]
        + run.effective_attention_weight * terms["attention"]
        + run.config.preservation_weight * terms["preservation"]
        + run.config.outside_preservation_weight * terms["outside"]
    )


CALIBRATION_EPS = 1e-12
"""Floor of the attention gradient's norm in the calibration (a zero gradient gives a huge weight, not a crash)."""


def gradient_norms(run: TrainingRun, step: int = 0) -> tuple[float, float]:
    """(||grad of the denoising loss||, ||grad of the attention loss||) on the trainables, both
    from one forward over ``step``'s batch: the denoising loss is instance + lambda_prior x prior,
    the attention loss unweighted. Nothing is updated."""
    params = phases.trained_parameters(run)
    terms, _ = losses(run, *draw(run, step))
    denoise = terms["instance"] + run.config.lambda_prior * terms["prior"]
    norms = []
    for i, term in enumerate((denoise, terms["attention"])):
        if not term.requires_grad:
            norms.append(0.0)
            continue
        grads = torch.autograd.grad(term, params, retain_graph=i == 0, allow_unused=True)
        norms.append(float(torch.sqrt(sum((g.detach().float() ** 2).sum() for g in grads if g is not None) + 0.0)))
    if run.router is not None:
        run.router.clear()
    return norms[0], norms[1]


def weight_from_norms(norms: list[tuple[float, float]], fraction: float) -> float:
    """The calibrated weight from per-batch ``(||grad denoise||, ||grad attention||)`` pairs:
    ``fraction`` x the ratio of their means (the attention mean floored at ``CALIBRATION_EPS``)."""
    g_denoise = sum(d for d, _ in norms) / len(norms)
    g_attention = sum(a for _, a in norms) / len(norms)
    return fraction * g_denoise / max(g_attention, CALIBRATION_EPS)


def calibrate_attention_weight(run: TrainingRun) -> float:
    """Set (and return) ``run.effective_attention_weight`` so that the attention term's gradient on the
    trainables is ``attention_fraction`` x the denoising loss's, on average over the batches of
    the first ``calibration_batches`` steps:

        lambda = attention_fraction * mean ||grad denoise|| / max(mean ||grad attention||, eps)

    Why several batches: both norms depend strongly on the batch's random timesteps (the
    attention gradient is 20-40x the denoising one at t >= 800 on TinyWorld, 3x at small t), so
    one batch sets a weight that varies by more than an order of magnitude between seeds.
    The batches are the ones training draws for those steps (``draw`` is a pure function of
    (seed, step)), so calibrating changes no step's data.

    A no-op (the config's ``attention_weight`` stays) unless ``attention_weight_mode`` is
    "calibrated" and the run is guided (guidance "none" has no attention term)."""
    config = run.config
    if not config.calibrated or run.router is None:
        return run.effective_attention_weight
    norms = [gradient_norms(run, step) for step in range(config.calibration_batches)]
    weight = weight_from_norms(norms, config.attention_fraction)
    if not math.isfinite(weight):
        raise TrainingDiverged(
            f"attention calibration: gradient norms (denoise, attention) per batch {norms} give no finite "
            "weight; check the images for NaN, or use attention_weight_mode='fixed'"
        )
    run.effective_attention_weight = weight
    return weight


def instance_loss(
    unmasked_weight: float, pred: torch.Tensor, target: torch.Tensor, masks: torch.Tensor
) -> torch.Tensor:
    """Weighted MSE of the instance rows: pixels inside the union of the named concepts' masks
    weigh 1, the others ``unmasked_weight`` (1: plain MSE; 0: Break-A-Scene's masked loss, only
    the concepts' pixels count), divided by the total weight so the loss keeps its scale."""
    if unmasked_weight == 1:
        return F.mse_loss(pred, target)
    union = mask_to_grid(masks.amax(dim=1), tuple(pred.shape[-2:])).unsqueeze(1)
    weight = union + unmasked_weight * (1 - union)
    return ((pred - target) ** 2 * weight).sum() / (weight.sum() * pred.shape[1]).clamp_min(1e-8)


@dataclass
class Optimization:
    """The optimiser of a run's trainables, with the fp16 loss scaler when autocast needs one."""

    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    max_grad_norm: float

    @classmethod
    def for_run(cls, run: TrainingRun) -> Optimization:
        config = run.config
        phases.freeze_untrained(run)
        optimizer = optimizer_class(config)(
            phases.param_groups(run),
            lr=config.effective_learning_rate,
            betas=(config.adam_beta1, config.adam_beta2),
            eps=config.adam_epsilon,
            weight_decay=config.weight_decay,
        )
        scaler = torch.amp.GradScaler("cuda") if run.amp == torch.float16 else None
        return cls(optimizer, scaler, config.max_grad_norm)

    def update(self, total: torch.Tensor, config=None, step: int = 0) -> None:
        """Backward of ``total``, gradient clipping, one optimiser step; with ``config``, at the
        rates of ``step``'s phase (``phases``: the tokens-only warm-up)."""
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            total.backward()
        if config is not None:
            phases.apply_phase(self.optimizer, config, step)
            phases.drop_frozen_grads(self.optimizer, config, step)
        if self.max_grad_norm and self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()


def train_step(run: TrainingRun, optimization: Optimization, step: int) -> dict[str, float]:
    """One optimiser step (0-based ``step``); returns the losses as floats."""
    terms, _ = losses(run, *draw(run, step))
    total = terms["loss"]
    if not torch.isfinite(total):
        raise TrainingDiverged(
            f"step {step + 1}: loss is {float(total.detach())} ({ {k: float(v.detach()) for k, v in terms.items()} }); "
            "training stopped and the last good checkpoint is kept. Check the images for NaN, lower the "
            "learning rate, or use mixed_precision='fp32'."
        )
    optimization.update(total, run.config, step)
    if run.router is not None:
        run.router.clear()  # drop this step's maps (and any recomputed during backward)
    return {k: float(v.detach()) for k, v in terms.items()}
