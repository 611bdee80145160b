"""API-format nodes around the TinyWorld model that the integration tests' graphs share.

Graphs put the loader at node "1", so the trainer and the preview take MODEL / CLIP / VAE from
there unless told otherwise. Each builder returns one node; ``inputs`` add or replace widgets.
"""

from __future__ import annotations

TINYWORLD = {"class_type": "TextLocTinyWorldLoader", "inputs": {"seed": 0, "use_shipped_weights": True}}
"""TextLoc TinyWorld Loader with the shipped weights: MODEL, CLIP, VAE (CPU-fast)."""

LOADER = ["1", 0], ["1", 1], ["1", 2]
"""The MODEL, CLIP and VAE outputs of the loader at node "1"."""


def concept_set(images: int, seed: int = 0, concept: str = "dotstar", token: str = "<tw1>") -> dict:
    """TextLoc TinyWorld Concept Set of one concept, without its companion: CONCEPTS, IMAGE, MASK."""
    inputs = {"concept": concept, "token": token, "images": images, "seed": seed, "include_companion": False}
    return {"class_type": "TextLocTinyWorldConceptSet", "inputs": inputs}


def train_node(concepts: list, name: str, **inputs) -> dict:
    """TextLoc Train of the loader's model on ``concepts`` under ``name``: hard guidance, batch 2,
    no prior images, one step, a checkpoint every step."""
    model, clip, vae = LOADER
    widgets = {"guidance": "hard", "steps": 1, "learning_rate": 5e-3, "batch": 2, "prior_images": 0, "seed": 0}
    widgets.update(checkpoint_every=1, adapter_name=name)
    return {
        "class_type": "TextLocTrain",
        "inputs": {"model": model, "clip": clip, "vae": vae, "concepts": concepts, **widgets, **inputs},
    }


def attention_preview(prompt: str, seed: int, steps: int, model=LOADER[0], clip=LOADER[1], **inputs) -> dict:
    """TextLoc Attention Preview of ``prompt`` (no negative), 64 x 64, one image, euler at cfg 4,
    decoded by the loader's VAE; ``tokens`` empty unless given."""
    widgets = {"prompt": prompt, "negative": "", "tokens": "", "seed": seed, "steps": steps, "cfg": 4.0}
    widgets.update(sampler_name="euler", scheduler="normal", width=64, height=64, batch_size=1)
    return {
        "class_type": "TextLocAttentionPreview",
        "inputs": {"model": model, "clip": clip, "vae": LOADER[2], **widgets, **inputs},
    }


def concept_from_mask(images: list, masks: list, name: str, token: str, **inputs) -> dict:
    """TextLoc Concept from Mask: the concept ``name`` (``token``, class word "star") of
    ``images`` and ``masks``; ``concepts`` (an earlier set) may be given."""
    widgets = {"images": images, "masks": masks, "name": name, "token": token, "class_word": "star"}
    return {"class_type": "TextLocConceptFromMask", "inputs": {**widgets, **inputs}}


def apply_adapter(adapter_file: str, **inputs) -> dict:
    """TextLoc Apply Adapter of ``adapter_file`` at strength 1 to the loader's MODEL and CLIP;
    ``adapter`` (a trained ADAPTER) may be given instead."""
    widgets = {"model": LOADER[0], "clip": LOADER[1], "adapter_file": adapter_file, "strength": 1.0}
    return {"class_type": "TextLocApplyAdapter", "inputs": {**widgets, **inputs}}


def score_images(images: list, references: list, prompt: str, filename_prefix: str, **inputs) -> dict:
    """TextLoc Score Images with TinyWorld's feature model, KID subsets of 5."""
    widgets = {"images": images, "references": references, "prompt": prompt, "feature_model": "tinyworld"}
    widgets.update(kid_subset_size=5, filename_prefix=filename_prefix)
    return {"class_type": "TextLocScoreImages", "inputs": {**widgets, **inputs}}
