"""TinyWorld references: fresh renders of a held-out concept alone, for scoring generations.

The personalisation photos show the concept next to its companion; CLIP-I and KID of "the
concept" need it alone (as the TinyWorld table does), on varied backgrounds.
"""

from __future__ import annotations

import numpy as np
import torch

from ..textloc_core.tinyworld import BACKGROUNDS, render_scene, world


class TinyWorldReferences:
    """Renders of a TinyWorld concept alone, one background after another."""

    CATEGORY = "textloc/tinyworld"
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("images", "masks")
    FUNCTION = "render"
    DESCRIPTION = "Render a held-out TinyWorld concept alone (reference images for TextLoc Score Images)."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "concept": ([c.name for c in world.HELD_OUT], {"tooltip": "Held-out concept to render."}),
                "images": ("INT", {"default": 8, "min": 1, "max": 256, "tooltip": "How many renders."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip": "Seed of the object placement."}),
            }
        }

    def render(self, concept, images, seed):
        kind = world.held_out_concept(concept).kind
        scenes = [render_scene(objects=[kind], background=BACKGROUNDS[i % len(BACKGROUNDS)], seed=10_000 + 97 * seed + i)
                  for i in range(images)]
        pictures = torch.from_numpy(np.stack([s.image for s in scenes])).float()  # (B, H, W, 3)
        masks = torch.from_numpy(np.stack([s.masks[0] for s in scenes])).float()
        return pictures, masks
