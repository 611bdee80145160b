"""TinyWorld references: fresh renders of a held-out concept alone, for scoring generations.

The personalisation photos show the concept next to its companion; CLIP-I and KID of "the
concept" need it alone (as the TinyWorld table does), on varied backgrounds.
"""

from __future__ import annotations

import numpy as np
import torch
from comfy_api.latest import io

from ..textloc_core.tinyworld import BACKGROUNDS, render_scene, world
from .schema import NodeText, named
from .tinyworld_nodes import held_out_input

TINYWORLD_REFERENCES_DESCRIPTION = (
    "Render a held-out TinyWorld concept alone (reference images for TextLoc Score Images)."
)


REFERENCES_TOOLTIPS = {
    "concept": "Held-out concept to render.",
    "images": "How many renders.",
    "seed": "Seed of the object placement.",
}
"""What each TinyWorld References input does, as its tooltip in the UI says."""
REFERENCES_NODE = NodeText(
    "TextLocTinyWorldReferences", "TextLoc TinyWorld References", TINYWORLD_REFERENCES_DESCRIPTION, REFERENCES_TOOLTIPS
)


class TinyWorldReferences(io.ComfyNode):
    """Renders of a TinyWorld concept alone, one background after another."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return REFERENCES_NODE.schema(
            outputs=[named(io.Image, "images"), named(io.Mask, "masks")],
            inputs=[
                held_out_input(REFERENCES_NODE),
                REFERENCES_NODE.input(io.Int, "images", default=8, min=1, max=256),
                REFERENCES_NODE.seed(),
            ],
        )

    @classmethod
    def execute(cls, concept, images, seed) -> io.NodeOutput:
        kind = world.held_out_concept(concept).kind
        scenes = [
            render_scene(objects=[kind], background=BACKGROUNDS[i % len(BACKGROUNDS)], seed=10_000 + 97 * seed + i)
            for i in range(images)
        ]
        pictures = torch.from_numpy(np.stack([s.image for s in scenes])).float()  # (B, H, W, 3)
        masks = torch.from_numpy(np.stack([s.masks[0] for s in scenes])).float()
        return io.NodeOutput(pictures, masks)
