"""The adapter in ComfyUI's own formats, so stock nodes can use it without this pack.

The writers are ``textloc_core.adapter_formats``'s; this module only decides where the
files go inside ComfyUI's folders (``nodes/paths.py``):

* K/V deltas -> ``models/loras/textloc/<name>.safetensors`` (``diffusion_model.<layer>.to_k.diff``),
  which ``LoraLoaderModelOnly`` at strength s applies as W + s * delta: the same arithmetic
  as our Apply node;
* each token -> ``models/embeddings/textloc/<name>_<concept>.safetensors`` (one tensor per text
  encoder), used by ``CLIPTextEncode`` as ``embedding:<name>_<concept>``. Names carry the
  adapter name, so two adapters with the same token never overwrite each other's file.
"""

from __future__ import annotations

from pathlib import Path

from ..textloc_core.adapter import Adapter
from ..textloc_core.adapter_formats import write_comfy_embedding, write_comfy_unet_patch
from . import paths


def write_stock_files(adapter: Adapter, name: str, encoder_sizes: list[tuple[str, int]]) -> dict[str, Path]:
    """Write the LoRA and one embedding per concept; returns {"lora": path, "<concept>": path}."""
    written = {"lora": write_comfy_unet_patch(adapter, paths.lora_path(name))}
    for concept in adapter.metadata.concepts:
        vector = adapter.token_embeddings[concept["token"]]
        written[concept["name"]] = write_comfy_embedding(vector, paths.embedding_path(name, concept["name"]), dict(encoder_sizes))
    return written
