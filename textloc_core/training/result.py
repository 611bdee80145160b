"""What a training run reports while it runs and returns at the end, and its adapter."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..adapters.adapter import Adapter, AdapterMetadata, architecture_signature
from ..backends.base import ModelBundle
from ..backends.fingerprint import kv_weights
from ..data.concepts import ConceptSet
from .config import TrainConfig


@dataclass
class StepReport:
    """What ``on_step`` receives after every optimiser step."""

    step: int
    """1-based number of the step just done."""
    total: int
    losses: dict[str, float]
    """"loss" (total), "instance", "prior", "attention"."""
    seconds: float
    effective_attention_weight: float | None = None
    """The attention term's weight in this step's loss (calibrated or ``attention_weight``)."""


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
    effective_attention_weight: float | None = None
    """The attention term's weight the run used: ``attention_weight``, or the calibrated one."""


def make_adapter(result: TrainResult, concept_set: ConceptSet, bundle: ModelBundle) -> Adapter:
    """The adapter (deltas, tokens, metadata) of a training result, ready for ``save_adapter``."""
    config = result.config or TrainConfig()
    metadata = AdapterMetadata(
        base_fingerprint=result.fingerprint or bundle.fingerprint,
        architecture=architecture_signature(kv_weights(bundle.denoiser)),
        concepts=[
            {"name": c.name, "token": c.token, "class_word": c.class_word, "init_word": c.init_word or ""}
            for c in concept_set.concepts
        ],
        guidance=config.guidance,
        train_config=config.to_json(),
        steps=result.steps_done,
        data_hashes={"concept_set": concept_set.data_hash()} if hasattr(concept_set, "data_hash") else {},
    )
    return Adapter(dict(result.kv_deltas), dict(result.token_embeddings), metadata)
