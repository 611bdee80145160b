"""A test-only ComfyUI node pack: "TextLoc Test Tiny SDXL Loader" gives the tiny, randomly
initialised SDXL-architecture MODEL / CLIP / VAE of ``tiny_sdxl_comfy``, "TextLoc Test Tiny DiT
Loader" the Flux- or SD3.5-architecture ones of ``tiny_dit_comfy``; "TextLoc Test Deep
Copy" deep-copies a MODEL / CLIP / VAE the way ComfyUI 0.33's own nodes do (TrainLoraNode).

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


class DeepCopy:
    """``clone(force_deepcopy=True)`` of the MODEL's, CLIP's and VAE's patchers (ComfyUI 0.33+),
    reporting per part whether the copy holds the same weights in different tensors."""

    RETURN_TYPES = ("STRING",)
    FUNCTION = "copy"
    CATEGORY = "textloc/testing"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "clip": ("CLIP",), "vae": ("VAE",)}}

    def copy(self, model, clip, vae):
        import torch

        lines = []
        for part, patcher in (("model", model), ("clip", clip.patcher), ("vae", vae.patcher)):
            copied = patcher.clone(force_deepcopy=True)
            old, new = patcher.model.state_dict(), copied.model.state_dict()
            differ = sorted(set(old) ^ set(new)) + [k for k in old if k in new and not torch.equal(old[k], new[k])]
            shared = any(old[k].data_ptr() == new[k].data_ptr() for k in old if k in new)
            what = f"different weights ({', '.join(differ[:3])})" if differ else "same weights"
            lines.append(f"{part}: {what}, {'shared' if shared else 'own'} tensors")
        report = "\n".join(lines)
        return {"ui": {"text": [report]}, "result": (report,)}


class TinyDiTLoader:
    """The tiny Flux- or SD3.5-architecture model of ``tiny_dit_comfy``, built from a seed, its
    weights optionally stored as UNETLoader's ``weight_dtype`` option stores them."""

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"
    CATEGORY = "textloc/testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "family": (["flux", "sd3"],),
                "seed": ("INT", {"default": 0, "min": 0, "max": 1000}),
                "weight_dtype": (["default", "fp8_e4m3fn"],),
            }
        }

    def load(self, family, seed, weight_dtype):
        import folder_paths
        import tiny_dit_comfy
        import torch

        dtype = torch.float8_e4m3fn if weight_dtype == "fp8_e4m3fn" else None
        return tiny_dit_comfy.build_all(
            family, seed, embedding_directory=folder_paths.get_folder_paths("embeddings"), weight_dtype=dtype
        )


NODE_CLASS_MAPPINGS = {
    "TextLocTestTinySDXLLoader": TinySDXLLoader,
    "TextLocTestTinyDiTLoader": TinyDiTLoader,
    "TextLocTestDeepCopy": DeepCopy,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "TextLocTestTinySDXLLoader": "TextLoc Test Tiny SDXL Loader",
    "TextLocTestTinyDiTLoader": "TextLoc Test Tiny DiT Loader",
    "TextLocTestDeepCopy": "TextLoc Test Deep Copy",
}
