"""TinyWorld in ComfyUI: the tiny model as MODEL/CLIP/VAE, and its personalisation images.

TinyWorld is the pack's embedded default (64 px scenes of shapes; see textloc_core/tinyworld):
small enough to train and sample on a CPU in seconds, so every workflow and test can run
end to end without downloading a checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch
from comfy_api.latest import io

from ..textloc_core.data.concepts import Concept, ConceptImage, ConceptSet
from ..textloc_core.tinyworld import world
from . import tinyworld_models
from .schema import CONCEPTS, NodeText, named

TINYWORLD_LOADER_DESCRIPTION = "Load the tiny TinyWorld diffusion model (64x64 px, SD1 architecture in miniature)."
TINYWORLD_CONCEPT_SET_DESCRIPTION = (
    "Render the personalisation set of a TinyWorld concept the base model never saw, with exact masks."
)


def held_out_input(node: NodeText) -> io.Combo.Input:
    """The ``concept`` combo of ``node``: TinyWorld's held-out concepts."""
    return node.input(io.Combo, "concept", options=[c.name for c in world.HELD_OUT])


LOADER_TOOLTIPS = {
    "seed": "Seed of the random weights used only when the TinyWorld weights are not installed.",
    "use_shipped_weights": "Use textloc_core/tinyworld/weights when present; off: always random weights (tests).",
}
"""What each TinyWorld Loader input does, as its tooltip in the UI says."""
CONCEPT_SET_TOOLTIPS = {
    "concept": "Held-out concept to teach (never shown in pretraining).",
    "token": "New identifier word for the concept in prompts.",
    "images": "How many photos to render (the paper uses 5).",
    "seed": "Seed of the scene layout.",
    "include_companion": "Also learn the companion object as a second concept (token <name>).",
}
"""What each TinyWorld Concept Set input does, as its tooltip in the UI says."""
LOADER_NODE = NodeText(
    "TextLocTinyWorldLoader", "TextLoc TinyWorld Loader", TINYWORLD_LOADER_DESCRIPTION, LOADER_TOOLTIPS
)
CONCEPT_SET_NODE = NodeText(
    "TextLocTinyWorldConceptSet",
    "TextLoc TinyWorld Concept Set",
    TINYWORLD_CONCEPT_SET_DESCRIPTION,
    CONCEPT_SET_TOOLTIPS,
)


class TinyWorldLoader(io.ComfyNode):
    """The TinyWorld model (shipped weights, or seeded random weights when none are installed)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return LOADER_NODE.schema(
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()],
            inputs=[LOADER_NODE.seed(), LOADER_NODE.input(io.Boolean, "use_shipped_weights", default=True)],
        )

    @classmethod
    def execute(cls, seed, use_shipped_weights=True) -> io.NodeOutput:
        import folder_paths

        embeddings = folder_paths.get_folder_paths("embeddings")
        return io.NodeOutput(*tinyworld_models.build_all(seed, use_shipped_weights, embedding_directory=embeddings))


class TinyWorldConceptSet(io.ComfyNode):
    """Personalisation photos of a held-out TinyWorld concept next to its companion object."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return CONCEPT_SET_NODE.schema(
            outputs=[
                named(CONCEPTS, "concepts"),
                named(io.Image, "images"),
                named(io.Mask, "concept_masks"),
                named(io.Mask, "companion_masks"),
                named(io.String, "class_word"),
            ],
            inputs=[
                held_out_input(CONCEPT_SET_NODE),
                CONCEPT_SET_NODE.input(io.String, "token", default="<tw1>"),
                CONCEPT_SET_NODE.input(io.Int, "images", default=5, min=1, max=64),
                CONCEPT_SET_NODE.seed(),
                CONCEPT_SET_NODE.input(io.Boolean, "include_companion", default=False),
            ],
        )

    @classmethod
    def execute(cls, concept, token, images, seed, include_companion=False) -> io.NodeOutput:
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
        return io.NodeOutput(ConceptSet(concepts, items), pictures, concept_masks, companion_masks, held.class_word)
