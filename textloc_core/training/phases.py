"""Which trainables the optimiser updates, and at what rate, step by step.

Two levers live here: ``TrainConfig.train_keys`` (K+V deltas, or V only) and the two-phase
schedule (``token_warmup_steps``: the tokens alone at their own rate first, then everything
at ``learning_rate``). Both are functions of the config and the step alone, so a resumed run
continues exactly.
"""

from __future__ import annotations

from torch import nn

from .config import TrainConfig
from .setup import TrainingRun

KEY_SUFFIX = ".to_k"
"""The canonical name ending of a W_K delta (``Trainables.kv_deltas`` keys)."""


def trained_deltas(run: TrainingRun) -> list[nn.Parameter]:
    """The K/V deltas that train: all of them, or only the W_V ones when ``train_keys`` is off."""
    return [p for key, p in run.trainables.kv_deltas.items() if run.config.train_keys or not key.endswith(KEY_SUFFIX)]


def trained_parameters(run: TrainingRun) -> list[nn.Parameter]:
    """Every parameter the optimiser updates, in its order: the trained deltas, then the tokens.
    The calibration measures gradients on exactly these."""
    return trained_deltas(run) + list(run.trainables.token_embeddings.values())


def freeze_untrained(run: TrainingRun) -> None:
    """Stop autograd from computing (and accumulating) gradients of the deltas that do not
    train: with ``train_keys`` off the W_K deltas stay zero, the base model's W_K."""
    trained = {id(p) for p in trained_deltas(run)}
    for p in run.trainables.kv_deltas.values():
        p.requires_grad_(id(p) in trained)


def param_groups(run: TrainingRun) -> list[dict]:
    """The optimiser's parameter groups: one, as before the warm-up existed (so older
    checkpoints' optimiser states still load), or, with a warm-up, the deltas and the tokens
    apart so that each phase can set their rates."""
    config = run.config
    if config.token_warmup_steps == 0:
        return [{"params": trained_parameters(run)}]
    return [{"params": trained_deltas(run)}, {"params": list(run.trainables.token_embeddings.values())}]


def in_warmup(config: TrainConfig, step: int) -> bool:
    """Step ``step`` (0-based) trains the tokens only."""
    return step < config.token_warmup_steps


def apply_phase(optimizer, config: TrainConfig, step: int) -> None:
    """Set the group rates of ``step``'s phase: during the warm-up the deltas' group gets no
    gradient (``drop_frozen_grads``) and the tokens ``effective_warmup_learning_rate``; after
    it both ``effective_learning_rate``."""
    if config.token_warmup_steps == 0:
        return
    tokens = optimizer.param_groups[1]
    tokens["lr"] = config.effective_warmup_learning_rate if in_warmup(config, step) else config.effective_learning_rate


def drop_frozen_grads(optimizer, config: TrainConfig, step: int) -> None:
    """During the warm-up, clear the deltas' gradients so AdamW leaves them (and their moment
    estimates and weight decay) exactly as they are."""
    if in_warmup(config, step):
        for p in optimizer.param_groups[0]["params"]:
            p.grad = None
