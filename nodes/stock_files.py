"""The adapter in ComfyUI's own formats, so stock nodes can use it without this pack.

* K/V deltas -> a LoRA file in the generic ``diff`` format ComfyUI's ``comfy.lora.load_lora``
  reads: ``diffusion_model.<layer>.to_k.diff`` = W - W0. ``LoraLoaderModelOnly`` at strength s
  then adds s * delta, the same arithmetic as our Apply node (ModelPatcher ``diff`` patch).
* each token embedding -> an embedding file ``{"clip_l": (n, 768)}`` (plus ``clip_g`` on SDXL),
  which ``CLIPTextEncode`` injects when a prompt says ``embedding:NAME``.

Both are written atomically (``safe_io.save_tensors``) and hold only tensors (safetensors).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..textloc_core.adapter import Adapter
from ..textloc_core.safe_io import save_tensors
from . import paths


def lora_tensors(adapter: Adapter) -> dict[str, torch.Tensor]:
    return {f"diffusion_model.{key}.diff": delta.float().contiguous() for key, delta in adapter.kv_deltas.items()}


def embedding_tensors(vector: torch.Tensor, encoder_sizes: list[tuple[str, int]]) -> dict[str, torch.Tensor]:
    """Split a (n, D_total) token vector into one tensor per text encoder (``clip_l``, ``clip_g``...)."""
    out, start = {}, 0
    for name, size in encoder_sizes:
        out[name] = vector[:, start:start + size].float().contiguous()
        start += size
    if start != vector.shape[-1]:
        raise ValueError(f"token embedding has width {vector.shape[-1]}, the text encoders {encoder_sizes} need {start}")
    return out


def write_stock_files(adapter: Adapter, name: str, encoder_sizes: list[tuple[str, int]]) -> dict[str, Path]:
    """Write the LoRA and one embedding per concept; returns {"lora": path, "<concept>": path}."""
    written = {"lora": save_tensors(paths.lora_path(name), lora_tensors(adapter), {"textloc.adapter": name})}
    for concept in adapter.metadata.concepts:
        vector = adapter.token_embeddings[concept["token"]]
        path = paths.embedding_path(name, concept["name"])
        written[concept["name"]] = save_tensors(path, embedding_tensors(vector, encoder_sizes), {"textloc.token": concept["token"]})
    return written
