"""One training loop for every guidance (hard, soft, none): Textual Localization / Custom Diffusion.

Trainable: an additive delta on every text W_K and W_V (``KVDeltaInjector``: a UNet's attn2, a
transformer's text stream) and one new embedding per concept token (``setup.Trainables``).
``setup`` builds the run, ``step.train_step`` is one optimiser step (the loss is in ``step``'s
module doc), and ``train`` here runs the steps: freezing the base model, polling for a stop,
writing and resuming checkpoints. With guidance "none" nothing is routed or captured, so the baseline
costs exactly a Custom Diffusion step. With ``attention_weight_mode="calibrated"`` the
attention term's weight is set once before the first step (``step.calibrate_attention_weight``)
and recorded in every checkpoint; a resumed run reuses it rather than recalibrating.

Reproducibility: each step's batch choice, timesteps and noise come from a generator seeded
by (seed, step), so a run resumed from a checkpoint continues bit-identically on CPU without
replaying any RNG.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..backends.base import ModelBundle
from ..data.concepts import ConceptSet
from ..data.validation import CheckedConceptSet
from ..stop import Cancelled, check_stop
from . import checkpoint
from .config import TrainConfig
from .preservation import applicable, setup_preservation
from .result import StepReport, TrainResult
from .setup import TrainingRun, setup, setup_prior
from .step import Optimization, TrainingDiverged, calibrate_attention_weight, train_step

__all__ = ["StepReport", "TrainResult", "TrainingDiverged", "train"]


def train(
    bundle: ModelBundle,
    concept_set: ConceptSet | CheckedConceptSet,
    config: TrainConfig,
    *,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    on_step: Callable[[StepReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    prior_cache_dir: Path | None = None,
) -> TrainResult:
    """Train ``concept_set``'s tokens and the attn2 K/V deltas of ``bundle``; see the module doc.

    ``concept_set`` is checked first (``setup.checked_for_run``), unless it comes as the
    ``CheckedConceptSet`` of ``validate_concept_set`` for this run's side and model rule.

    The base model is left bit-identical (hooks removed, requires_grad restored). Works
    when called under ``torch.inference_mode`` (ComfyUI does). ``should_stop`` is polled
    before every step and inside every long phase; a stop (``stop.Cancelled``, from
    the poll or raised by the backend) returns the partial result with ``stopped_early=True``.
    With ``checkpoint_dir`` a checkpoint is written every ``config.checkpoint_every`` steps
    and at the end; ``resume=True`` continues from the latest one there.
    """
    with torch.inference_mode(False), torch.enable_grad():
        frozen = [(p, p.requires_grad) for m in _models(bundle) for p in m.parameters()]
        for p, _ in frozen:
            p.requires_grad_(False)
        try:
            return _run(bundle, concept_set, config, checkpoint_dir, resume, on_step, should_stop, prior_cache_dir)
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


def _run(bundle, concept_set, config, checkpoint_dir, resume, on_step, should_stop, prior_cache_dir) -> TrainResult:
    config = applicable(config, bundle.denoiser)  # what the run records and resumes under
    if resume and checkpoint_dir is not None:  # before VAE encoding and prior generation
        checkpoint.check_resumable(Path(checkpoint_dir), config.to_json())
    try:
        run = setup(bundle, concept_set, config, should_stop)
    except Cancelled:  # stopped while encoding the photos: nothing trained, nothing installed
        return TrainResult(
            kv_deltas={},
            token_embeddings={},
            history=[],
            stopped_early=True,
            steps_done=0,
            fingerprint=bundle.fingerprint,
            config=config,
            prompts=[],
        )
    stopped = False
    try:
        optimization = Optimization.for_run(run)
        setup_prior(run, prior_cache_dir, should_stop)
        setup_preservation(run)
    except Cancelled:  # stopped while generating the prior images: no step taken
        stopped = True
    except BaseException:
        run.injector.remove()
        raise
    with run.hooks():
        start, history = (0, []) if stopped else _resumed(run, optimization, checkpoint_dir, resume)
        if not stopped:
            stopped = _steps(run, optimization, start, history, checkpoint_dir, on_step, should_stop)
        if stopped and checkpoint_dir is not None and len(history) > start:
            _save(checkpoint_dir, len(history), run, optimization, history)
        kv_deltas, token_embeddings = run.trainables.copies()
        return TrainResult(
            kv_deltas=kv_deltas,
            token_embeddings=token_embeddings,
            history=history,
            stopped_early=stopped,
            steps_done=len(history),
            fingerprint=bundle.fingerprint,
            config=config,
            prompts=list(run.prompts),
            effective_attention_weight=run.effective_attention_weight,
        )


CHECKPOINT_WEIGHT_KEY = "effective_attention_weight"
"""Where a checkpoint records the attention weight the run used; older checkpoints call it
"lambda_attn_used" or, earlier still, "attention_weight" (both still read)."""


def recorded_effective_weight(extra: dict) -> float | None:
    """The attention weight a checkpoint's ``extra`` recorded (None: none recorded)."""
    for key in (CHECKPOINT_WEIGHT_KEY, "lambda_attn_used", "attention_weight"):
        if key in extra:
            return float(extra[key])
    return None


def _resumed(run: TrainingRun, optimization: Optimization, checkpoint_dir, resume: bool) -> tuple[int, list]:
    """(first step, history so far): from the latest checkpoint when resuming, else (0, [])."""
    if not resume or checkpoint_dir is None:
        return 0, []
    config = run.config
    state = checkpoint.load_latest_checkpoint(Path(checkpoint_dir), config_json=config.to_json())
    if state is None:
        return 0, []
    run.trainables.load_checkpoint(state.tensors)
    optimization.optimizer.load_state_dict(state.optimizer_state)
    recorded = recorded_effective_weight(state.extra)
    if config.calibrated and recorded is None:
        raise ValueError(
            f"checkpoint {state.path} has no recorded attention weight, which a calibrated run "
            "needs to continue; train into a new folder (or turn resume off)"
        )
    if recorded is not None:  # never recalibrate: the run continues exactly
        run.effective_attention_weight = recorded
    return state.step, list(state.extra.get("history", []))


def _steps(
    run: TrainingRun, optimization: Optimization, start: int, history: list, checkpoint_dir, on_step, should_stop
) -> bool:
    """Calibrate (a fresh run) and take steps ``start``.. into ``history``; True when stopped.

    A stop is a ``Cancelled``: from ``should_stop`` before a step, or raised inside one by a
    backend whose host stops mid-call. A step that raised had not updated anything yet, so the
    steps before it are kept like any other stop. Any other exception propagates.
    """
    config = run.config
    try:
        if start == 0:
            calibrate_attention_weight(run)  # a no-op unless attention_weight_mode is "calibrated"
        for step in range(start, config.steps):
            check_stop(should_stop, f"before step {step + 1} of {config.steps}")
            began = time.perf_counter()
            losses = train_step(run, optimization, step)
            history.append(losses)
            done = step + 1
            if checkpoint_dir is not None and (done % max(1, config.checkpoint_every) == 0 or done == config.steps):
                _save(checkpoint_dir, done, run, optimization, history)
            if on_step is not None:
                on_step(
                    StepReport(done, config.steps, losses, time.perf_counter() - began, run.effective_attention_weight)
                )
    except Cancelled:
        return True
    return False


def _save(checkpoint_dir, step: int, run: TrainingRun, optimization: Optimization, history) -> None:
    # No RNG state: every step's randomness is derived from (seed, step).
    checkpoint.save_checkpoint(
        Path(checkpoint_dir),
        step,
        run.trainables.to_checkpoint(),
        optimization.optimizer.state_dict(),
        run.config.to_json(),
        extra={"history": history, CHECKPOINT_WEIGHT_KEY: run.effective_attention_weight},
    )
