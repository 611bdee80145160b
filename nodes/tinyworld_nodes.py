"""TinyWorld in ComfyUI: the tiny model as MODEL/CLIP/VAE, and its personalisation images.

TinyWorld is the pack's embedded default (64 px scenes of shapes; see textloc_core/tinyworld):
small enough to train and sample on a CPU in seconds, so every workflow and test can run
end to end without downloading a checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch

from ..textloc_core.concepts import Concept, ConceptImage, ConceptSet
from ..textloc_core.tinyworld import world
from .concept_nodes import CONCEPTS
from . import tinyworld_models

CATEGORY = "textloc/tinyworld"


class TinyWorldLoader:
    """The TinyWorld model (shipped weights, or seeded random weights when none are installed)."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"
    DESCRIPTION = "Load the tiny TinyWorld diffusion model (64x64 px, SD1 architecture in miniature)."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip": "Seed of the random weights used only when the TinyWorld weights are not installed."}),
                "use_shipped_weights": ("BOOLEAN", {"default": True, "tooltip": "Use textloc_core/tinyworld/weights when present; off: always random weights (tests)."}),
            }
        }

    def load(self, seed, use_shipped_weights=True):
        import folder_paths

        embeddings = folder_paths.get_folder_paths("embeddings")
        return tinyworld_models.build_all(seed, use_shipped_weights, embedding_directory=embeddings)


class TinyWorldConceptSet:
    """Personalisation photos of a held-out TinyWorld concept next to its companion object."""

    CATEGORY = CATEGORY
    RETURN_TYPES = (CONCEPTS, "IMAGE", "MASK", "MASK", "STRING")
    RETURN_NAMES = ("concepts", "images", "concept_masks", "companion_masks", "class_word")
    FUNCTION = "build"
    DESCRIPTION = "Render the personalisation set of a TinyWorld concept the base model never saw, with exact masks."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "concept": ([c.name for c in world.HELD_OUT], {"tooltip": "Held-out concept to teach (never shown in pretraining)."}),
                "token": ("STRING", {"default": "<tw1>", "tooltip": "New identifier word for the concept in prompts."}),
                "images": ("INT", {"default": 5, "min": 1, "max": 64, "tooltip": "How many photos to render (the paper uses 5)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip": "Seed of the scene layout."}),
                "include_companion": ("BOOLEAN", {"default": False, "tooltip": "Also learn the companion object as a second concept (token <name>)."}),
            }
        }

    def build(self, concept, token, images, seed, include_companion=False):
        from ..textloc_core.tinyworld.render import render_scene

        held = world.held_out_concept(concept)
        scenes = [render_scene(spec) for spec in world.personalization_specs(concept, seed, images)]
        pictures = torch.from_numpy(np.stack([s.image for s in scenes])).float()  # (B, H, W, 3)
        # objects are [companion, concept]: the concept is painted last and fully visible
        concept_masks = torch.from_numpy(np.stack([s.masks[1] for s in scenes])).float()
        companion_masks = torch.from_numpy(np.stack([s.masks[0] for s in scenes])).float()
        concepts = [Concept(held.name, token.strip(), held.class_word)]
        if include_companion:
            concepts.append(Concept(held.companion_name, f"<{held.companion_name}>", held.companion.shape))
        items = []
        for i in range(len(scenes)):
            masks = {held.name: concept_masks[i]}
            if include_companion:
                masks[held.companion_name] = companion_masks[i]
            items.append(ConceptImage(pictures[i].movedim(-1, 0).clone(), masks, f"tinyworld:{concept}[{i}]"))
        return (ConceptSet(concepts, items), pictures, concept_masks, companion_masks, held.class_word)
