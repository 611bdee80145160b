"""Text preservation: keep what W_K and W_V make of ordinary words while the deltas learn.

The K/V deltas act on every word of every prompt, not only on the identifier tokens. Trained
on a few photos they drift: the class word alone comes to draw the concept, and background and
object words stop working (on TinyWorld the adapter applied to "a star on grass" draws the
trained concept and loses the grass). Prior preservation fights this with generated images;
this term does it in the text space, with no image: for anchor prompts that hold no identifier
token (the class words and a list of common caption words), it penalises the relative change
the deltas make to the K and V those prompts produce,

    preservation = mean over layers of ||delta C^T||^2 / ||W C^T||^2,

C being the anchors' encoder outputs (every position). ||delta C^T||^2 = tr(delta S delta^T)
with S = C^T C, so only S matters; it is kept as a factor F (S ~ F F^T) of its leading
eigenvectors, which makes the term a few small matrix products a step. The identifier tokens'
own encodings can still move the K/V wherever ordinary text does not go.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

from ..data.concepts import ConceptSet

COLOUR_WORDS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "grey")
SHAPE_WORDS = ("circle", "square", "triangle", "star", "ring", "heart", "cross")
PATTERN_WORDS = ("dots", "stripes", "checkered")
SCENE_WORDS = (
    "grass", "sand", "water", "sky", "night", "snow", "forest", "beach", "street", "room", "table",
    "mountain", "city", "field", "garden", "kitchen", "desert", "river", "sunset", "wall",
)  # fmt: skip
SUBJECT_WORDS = (
    "person", "man", "woman", "child", "dog", "cat", "bird", "horse", "car", "house", "tree", "flower",
    "cup", "chair", "book", "ball", "toy", "doll", "bucket", "bottle", "hat", "bag", "shoe",
)  # fmt: skip
STYLE_WORDS = ("photo", "painting", "drawing", "cartoon", "sketch", "watercolor", "picture")
COMMON_WORDS = COLOUR_WORDS + SHAPE_WORDS + PATTERN_WORDS + SCENE_WORDS + SUBJECT_WORDS + STYLE_WORDS
"""Generic caption words the anchors are made of: the everyday vocabulary of prompts (colours,
shapes, backgrounds, subjects, styles), not any one model's or data set's."""

log = logging.getLogger("textloc")

ENERGY_KEPT = 0.999
"""Share of the anchors' second-moment energy the factor F keeps (the rest is noise)."""


def anchor_prompts(concept_set: ConceptSet) -> list[str]:
    """The prompts whose K/V the term preserves: each concept's class word, then the common
    words, each as "a <word>" (deduplicated, in that order)."""
    words = [c.class_word for c in concept_set.concepts] + list(COMMON_WORDS)
    return [f"a {w}" for w in dict.fromkeys(words)]


@dataclass
class PreservationAnchors:
    """The anchors' second-moment factor and each trained layer's base energy on it."""

    factor: torch.Tensor
    """(D, r) F with F F^T ~ C^T C / rows, on the run's device."""
    base_energy: dict[str, torch.Tensor]
    """Delta key -> ||W F||^2 of the base weight (the denominator)."""

    def loss(self, deltas: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean over the given deltas of their relative K/V change on the anchors."""
        terms = [(delta.float() @ self.factor).pow(2).sum() / self.base_energy[key] for key, delta in deltas.items()]
        return torch.stack(terms).mean()


def second_moment_factor(rows: torch.Tensor, energy_kept: float = ENERGY_KEPT) -> torch.Tensor:
    """(D, r) F with F F^T the leading part of rows^T rows / len(rows), keeping ``energy_kept``
    of its trace."""
    rows = rows.double()
    moment = rows.T @ rows / len(rows)
    values, vectors = torch.linalg.eigh(moment)
    values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)
    share = values.cumsum(0) / values.sum().clamp_min(1e-30)
    r = int((share < energy_kept).sum()) + 1
    return (vectors[:, :r] * values[:r].sqrt()).float()


def build_anchors(text, concept_set: ConceptSet, base_weights: dict[str, torch.Tensor]) -> PreservationAnchors:
    """Encode the anchor prompts with the base text encoder (no identifier token) and measure
    each layer's base energy; ``base_weights`` maps every delta key to its base weight."""
    with torch.no_grad():
        context = text.encode(anchor_prompts(concept_set), {}).context.float()
        factor = second_moment_factor(context.reshape(-1, context.shape[-1]))
        energy = {
            key: (weight.detach().float().to(factor.device) @ factor).pow(2).sum().clamp_min(1e-12)
            for key, weight in base_weights.items()
        }
    return PreservationAnchors(factor, energy)


def supported(denoiser) -> bool:
    """Whether the term applies: not to models whose text K/V read per-block text states (Flux,
    SD3: ``text_kv_projections``), where the anchors would not be the encoder's outputs."""
    return not hasattr(denoiser, "text_kv_projections")


def applicable(config, denoiser):
    """``config`` for ``denoiser``: where the term does not apply (``supported``) its weight is
    set to 0 with a log line, so that the default trains every model and the run, its
    checkpoints and its adapter record what it did."""
    if config.preservation_weight > 0 and not supported(denoiser):
        log.info("preservation_weight does not apply to Flux / SD3 models (text K/V read per-block states); 0 is used")
        return replace(config, preservation_weight=0.0)
    return config


def setup_preservation(run) -> None:
    """Build ``run.preservation`` when ``config.preservation_weight`` is on, from the base model
    (the deltas are still zero)."""
    if run.config.preservation_weight <= 0:
        return
    from ..backends.fingerprint import kv_weights

    weights = kv_weights(run.bundle.denoiser)
    run.preservation = build_anchors(
        run.bundle.text, run.concept_set, {k: weights[k] for k in run.trainables.kv_deltas}
    )
