"""A test-only ComfyUI node pack: "TextLoc Test Tiny SDXL Loader" gives the tiny, randomly
initialised SDXL-architecture MODEL / CLIP / VAE of ``tiny_sdxl_comfy``.

The integration tests link this folder into the test server's custom_nodes, so a shipped
SDXL workflow can run headless: its CheckpointLoaderSimple (a user's SDXL checkpoint) is
swapped for this node, which has the same outputs. Never installed for users.
"""
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for path in (_HERE.parent, _HERE.parents[2]):  # tiny_sdxl_comfy, and the repository (textloc_core)
    if str(path) not in sys.path:
        sys.path.append(str(path))


class TinySDXLLoader:
    """The tiny SDXL-architecture model, built from a seed (weights never leave the process)."""

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"
    CATEGORY = "textloc/testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 1000})}}

    def load(self, seed):
        import folder_paths
        import tiny_sdxl_comfy

        return tiny_sdxl_comfy.build_all(seed, embedding_directory=folder_paths.get_folder_paths("embeddings"))


NODE_CLASS_MAPPINGS = {"TextLocTestTinySDXLLoader": TinySDXLLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"TextLocTestTinySDXLLoader": "TextLoc Test Tiny SDXL Loader"}
