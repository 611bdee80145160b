"""Adapters in the formats other tools load with their stock loaders.

ComfyUI (read from comfy/lora.py and comfy/sd1_clip.py, ComfyUI 0.3.x):

* **UNet patch file** for the stock ``LoraLoaderModelOnly``: ``model_lora_keys_unet`` maps the
  key ``"diffusion_model.<ldm module>"`` (the state-dict key minus ``.weight``) to that weight,
  and ``load_lora`` turns ``"<that key>.diff"`` into a ``("diff", (tensor,))`` patch, applied
  as ``W + strength * diff``. So the file holds
  ``diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.diff`` -> delta, and
  nothing else (any other key is logged as "lora key not loaded").
* **Embedding file** for ``embedding:NAME`` in the stock ``CLIPTextEncode``: ``load_embed``
  reads ``<embeddings dir>/NAME.safetensors``; a file with one tensor is used as is (its key
  does not matter; we write ``emb_params``); SDXL-style models look up their encoder's key
  (``clip_l``, ``clip_g``), so a multi-encoder embedding is written with one key per encoder.

diffusers Custom Diffusion (read from diffusers 0.42 loaders/unet.py, train_custom_diffusion.py):

* ``pytorch_custom_diffusion_weights.safetensors`` with
  ``"<attn processor name>.to_k_custom_diffusion.weight"`` / ``to_v`` holding the **full**
  fine-tuned weights (``W0 + delta``), e.g.
  ``down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_custom_diffusion.weight``.
  ``UNet2DConditionModel.load_attn_procs`` needs one entry per attention processor; the
  untrained ones (attn1) are stored, as diffusers' own ``.bin`` stores empty dicts, as
  zero-length tensors, which its loader treats the same way.
* one ``<token file name>.safetensors`` per token holding ``{token: embedding}``, loadable
  with ``pipeline.load_textual_inversion(folder, weight_name=...)``. SDXL has two text
  encoders; its token files hold ``{"clip_l": ..., "clip_g": ...}`` (the layout diffusers'
  docs load with ``load_textual_inversion(file["clip_l"], token=..., text_encoder=
  pipe.text_encoder, tokenizer=pipe.tokenizer)`` and again with ``clip_g`` and the second
  encoder), with the token in the header.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..backends.unet_names import diffusers_to_ldm_attn2, ldm_to_diffusers_attn2
from ..data import safe_io
from .adapter import Adapter, AdapterMetadata, architecture_signature

COMFY_UNET_PREFIX = "diffusion_model."
CUSTOM_DIFFUSION_WEIGHTS = "pytorch_custom_diffusion_weights.safetensors"
CUSTOM_DIFFUSION_WEIGHTS_BIN = "pytorch_custom_diffusion_weights.bin"
_CD_SUFFIX = "_custom_diffusion.weight"


# --- ComfyUI ---------------------------------------------------------------------------


COMFY_EMBEDDING_FORMAT = "textloc.comfy_embedding"
"""The ``format`` metadata of the embedding files ``write_comfy_embedding`` writes."""


def comfy_unet_patch(adapter: Adapter, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The tensors of a ComfyUI UNet patch file: ``diffusion_model.<key>.diff`` -> delta."""
    return {f"{COMFY_UNET_PREFIX}{key}.diff": delta.to(dtype) for key, delta in adapter.kv_deltas.items()}


def write_comfy_unet_patch(adapter: Adapter, path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> Path:
    """Write the K/V deltas for stock ``LoraLoaderModelOnly`` (put it in models/loras).

    The header also carries the adapter's metadata (``format`` says what the file is), so
    textloc can show where a patch file came from.
    """
    header = adapter.metadata.to_header()
    header["format"] = "textloc.comfy_unet_patch"
    return safe_io.save_tensors(path, comfy_unet_patch(adapter, dtype), header)


def write_comfy_embedding(
    embedding: torch.Tensor, path: str | os.PathLike, encoder_dims: Mapping[str, int] | None = None
) -> Path:
    """Write one token's ``(n_vectors, D)`` embedding for ComfyUI's ``embedding:NAME``.

    ``encoder_dims``: for models with several text encoders whose contexts are concatenated
    (SDXL: ``{"clip_l": 768, "clip_g": 1280}``), split ``D`` into one tensor per encoder key
    in that order. None: one tensor under ``emb_params`` (SD1.x, SD2.x).
    """
    embedding = embedding.detach().float()
    if embedding.dim() == 1:
        embedding = embedding.unsqueeze(0)
    tensors = {"emb_params": embedding} if encoder_dims is None else split_embedding(embedding, encoder_dims)
    return safe_io.save_tensors(path, tensors, {"format": COMFY_EMBEDDING_FORMAT})


# --- diffusers Custom Diffusion ------------------------------------------------------------


def write_custom_diffusion(
    adapter: Adapter,
    directory: str | os.PathLike,
    base_kv: Mapping[str, torch.Tensor],
    unet_config: Any,
    attention_layers: list[str] | None = None,
    encoder_dims: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Write ``adapter`` in diffusers' Custom Diffusion layout into ``directory``.

    ``base_kv``: canonical K/V key -> W0 of the base model (Custom Diffusion stores full
    weights). ``unet_config``: the diffusers UNet config (for layer names). ``attention_layers``:
    diffusers names of every attention module of the UNet (``unet.attn_processors`` keys minus
    ``.processor``); None assumes Stable Diffusion's layout, where each attn2 has an attn1 sibling.
    ``encoder_dims``: SDXL's ``{"clip_l": 768, "clip_g": 1280}`` splits each token's vector into
    one tensor per encoder (``split_embedding``); None (SD1.x/SD2.x) stores it whole.
    Returns ``{"weights": path, "embeddings": {token: path}}``.
    """
    directory = Path(directory)
    tensors: dict[str, torch.Tensor] = {}
    trained = set()
    for key, delta in adapter.kv_deltas.items():
        layer, proj = key.rsplit(".", 1)
        if key not in base_kv:
            raise ValueError(f"base weights: missing {key!r}, needed to store full Custom Diffusion weights")
        name = ldm_to_diffusers_attn2(layer, unet_config)
        trained.add(name)
        full = base_kv[key].detach().float().cpu() + delta.float().cpu()
        tensors[f"{name}.processor.{proj}{_CD_SUFFIX}"] = full
    if attention_layers is None:
        attention_layers = sorted(trained | {n[: -len("attn2")] + "attn1" for n in trained})
    for name in attention_layers:
        if name not in trained:
            tensors[f"{name}.processor"] = torch.empty(0)  # diffusers: "no weights for this processor"
    header = adapter.metadata.to_header()
    header["format"] = "pt"  # what diffusers itself writes; ours is "textloc_format"
    header["textloc_format"] = "textloc.custom_diffusion"
    weights = safe_io.save_tensors(directory / CUSTOM_DIFFUSION_WEIGHTS, tensors, header)
    embeddings = {}
    for token, embedding in adapter.token_embeddings.items():
        path = directory / f"{safe_io.safe_filename(token, 'token')}.safetensors"
        if encoder_dims is not None:
            parts = split_embedding(embedding.detach().float(), encoder_dims)
            embeddings[token] = safe_io.save_tensors(path, parts, {"format": "pt", "token": token})
            continue
        value = embedding[0] if embedding.shape[0] == 1 else embedding  # the train script stores (D,)
        embeddings[token] = safe_io.save_tensors(path, {token: value.detach().float()}, {"format": "pt"})
    return {"weights": weights, "embeddings": embeddings}


SDXL_ENCODER_KEYS = ("clip_l", "clip_g")
"""Keys of an SDXL embedding file's tensors, in the order a token's vector holds them."""


def split_embedding(embedding: torch.Tensor, encoder_dims: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """A ``(n_vectors, D)`` token vector as one tensor per text encoder (``encoder_dims`` in
    context order, e.g. SDXL's ``{"clip_l": 768, "clip_g": 1280}``)."""
    if embedding.dim() == 1:
        embedding = embedding.unsqueeze(0)
    if sum(encoder_dims.values()) != embedding.shape[-1]:
        raise ValueError(
            f"embedding of width {embedding.shape[-1]} cannot be split into encoders {dict(encoder_dims)} "
            f"(total {sum(encoder_dims.values())}): pass the text encoders' widths in context order"
        )
    tensors, start = {}, 0
    for key, width in encoder_dims.items():
        tensors[key] = embedding[:, start : start + width].contiguous()
        start += width
    return tensors


def _load_any(path: Path, what: str) -> tuple[dict, dict[str, str]]:
    """(tensors, safetensors header or {}) of a ``.safetensors`` or legacy ``.bin`` file."""
    if path.suffix == ".safetensors":
        return safe_io.load_tensors(path, what, "re-export it")
    loaded = safe_io.load_legacy_tensor_file(path, what)
    if not isinstance(loaded, dict):
        raise ValueError(f"{what} {path}: expected a dict of tensors, got {type(loaded).__name__}")
    return loaded, {}


def read_custom_diffusion(
    directory: str | os.PathLike,
    base_kv: Mapping[str, torch.Tensor],
    unet_config: Any,
    base_fingerprint: str = "",
    class_words: Mapping[str, str] | None = None,
) -> Adapter:
    """Read a Custom Diffusion folder (ours or diffusers' own) back into an ``Adapter``.

    Deltas are ``W - W0`` against ``base_kv`` (canonical key -> base weight). Token
    embeddings come from every other ``*.safetensors`` / ``*.bin`` file holding exactly one
    tensor keyed by its token. Files written by textloc keep their full metadata; foreign
    ones get ``guidance="none"`` (Custom Diffusion) and ``base_fingerprint``.
    """
    directory = Path(directory)
    state, header, weights_path = _custom_diffusion_weights(directory)
    deltas = _custom_diffusion_deltas(state, weights_path, base_kv, unet_config)
    embeddings = _custom_diffusion_embeddings(directory)
    if header.get("textloc_format") == "textloc.custom_diffusion":
        metadata = AdapterMetadata.from_header(dict(header, format="textloc.adapter"), weights_path)
    else:
        words = class_words or {}
        metadata = AdapterMetadata(
            base_fingerprint=base_fingerprint,
            architecture=architecture_signature(base_kv),
            concepts=[
                {
                    "name": safe_io.safe_filename(t, "token"),
                    "token": t,
                    "class_word": words.get(t, ""),
                    "init_word": None,
                }
                for t in embeddings
            ],
            guidance="none",
            extra={"source": f"diffusers Custom Diffusion: {json.dumps(str(directory))}"},
        )
    return Adapter(deltas, embeddings, metadata)


def _custom_diffusion_weights(directory: Path) -> tuple[dict, dict[str, str], Path]:
    """(state dict, safetensors header, path) of a Custom Diffusion folder's K/V weights file."""
    weights_path = directory / CUSTOM_DIFFUSION_WEIGHTS
    if weights_path.is_file():
        state, header = safe_io.load_tensors(weights_path, "Custom Diffusion weights", "re-export it")
        return state, header, weights_path
    if (directory / CUSTOM_DIFFUSION_WEIGHTS_BIN).is_file():
        weights_path = directory / CUSTOM_DIFFUSION_WEIGHTS_BIN
        state, _ = _load_any(weights_path, "Custom Diffusion weights")
        return state, {}, weights_path
    raise FileNotFoundError(f"{directory}: no {CUSTOM_DIFFUSION_WEIGHTS} (or .bin) in this folder")


def _custom_diffusion_deltas(
    state: Mapping, weights_path: Path, base_kv: Mapping[str, torch.Tensor], unet_config: Any
) -> dict[str, torch.Tensor]:
    """Canonical K/V key -> ``W - W0`` for each trained attn2 processor weight in ``state``."""
    deltas: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor) or value.numel() == 0:
            continue  # an untrained processor
        head, _, sub = key.partition(".processor.")
        if sub not in (f"to_k{_CD_SUFFIX}", f"to_v{_CD_SUFFIX}"):
            raise ValueError(
                f"Custom Diffusion weights {weights_path}: {key!r} is not a K/V weight "
                "(trained with --train_q_out?); textloc adapters hold cross-attention K/V only"
            )
        canonical = f"{diffusers_to_ldm_attn2(head, unet_config)}.{sub[: -len(_CD_SUFFIX)]}"
        if canonical not in base_kv:
            raise ValueError(f"Custom Diffusion weights {weights_path}: layer {canonical!r} is not in the base model")
        if tuple(value.shape) != tuple(base_kv[canonical].shape):
            raise ValueError(
                f"Custom Diffusion weights {weights_path}: {key!r} is {list(value.shape)}, the base model's "
                f"{list(base_kv[canonical].shape)}: it was trained for another architecture"
            )
        deltas[canonical] = value.float() - base_kv[canonical].detach().float().cpu()
    return deltas


def _custom_diffusion_embeddings(directory: Path) -> dict[str, torch.Tensor]:
    """Token -> embedding from every other file of the folder holding one tensor keyed by its
    token (or one per SDXL encoder, CLIP-L's first)."""
    embeddings: dict[str, torch.Tensor] = {}
    for path in sorted(directory.iterdir()):
        if path.name in (CUSTOM_DIFFUSION_WEIGHTS, CUSTOM_DIFFUSION_WEIGHTS_BIN) or path.suffix not in (
            ".safetensors",
            ".bin",
        ):
            continue
        content, file_header = _load_any(path, "embedding file")
        if set(content) == set(SDXL_ENCODER_KEYS):
            token = file_header.get("token") or path.stem
            embeddings[token] = torch.cat(
                [content[k].float().reshape(-1, content[k].shape[-1]) for k in SDXL_ENCODER_KEYS], -1
            )
            continue
        if len(content) != 1:
            continue
        ((token, value),) = content.items()
        if isinstance(value, torch.Tensor):
            embeddings[token] = value.float().reshape(-1, value.shape[-1])
    return embeddings
