"""The adapter: what a Textual Localization run produces, and how it goes onto a model.

An ``Adapter`` holds

* ``kv_deltas``: ``"<canonical attn2 name>.to_k"`` / ``".to_v"`` -> ``W - W0`` (weight-shaped),
  keyed by the LDM / ComfyUI layer names (``input_blocks.1.1.transformer_blocks.0.attn2``);
* ``token_embeddings``: identifier token -> ``(n_vectors, D)`` embedding;
* ``metadata``: ``AdapterMetadata`` (base fingerprint, architecture signature, concepts,
  guidance, TrainConfig JSON, steps, data hashes, versions).

It is stored as one safetensors file whose header carries the metadata as strings, so a
node can list adapters (``read_adapter_metadata``) without loading a tensor. Saving is
atomic; loading verifies a checksum, the required keys, the format version, that no newer
major version of the pack wrote the file (``pack_version``) and that every value is finite.

Putting adapters onto a model (checked against its architecture and base weights) is
``composition``; the files of ComfyUI's and diffusers' own loaders are ``formats``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..backends.fingerprint import PROJECTIONS
from ..data import safe_io
from .pack_version import UNKNOWN, pack_version, refuse_newer_major

FORMAT_NAME = "textloc.adapter"
FORMAT_VERSION = 1
"""Bump when the file layout changes incompatibly; ``load_adapter`` refuses newer files."""

_KV_PREFIX = "kv."
_EMB_PREFIX = "emb."
_REQUIRED_HEADER = ("format", "format_version", "base_fingerprint", "architecture", "concepts", "method")
_FIX_CORRUPT = "re-save it or retrain"


def architecture_signature(kv_weights: Mapping[str, torch.Tensor]) -> dict[str, list[int]]:
    """``{"<layer>.to_k": [out, in], ...}`` for a model's attn2 K/V weights (or deltas).

    Two models with the same signature accept each other's adapters shape for shape; a
    different one (SD1 vs SD2 vs SDXL, or another UNet layout) does not.
    """
    return {name: list(kv_weights[name].shape) for name in sorted(kv_weights)}


@dataclass
class AdapterMetadata:
    """Everything about an adapter except its tensors; stored as strings in the file header.

    ``concepts``: one dict per concept with ``name``, ``token``, ``class_word`` and
    ``init_word`` (``textloc_core.data.concepts.Concept`` fields). ``data_hashes``: source ->
    sha256 of each training image and mask, so a result can be traced to its data.
    """

    base_fingerprint: str
    architecture: dict[str, list[int]]
    concepts: list[dict]
    guidance: str
    """The run's ``TrainConfig.guidance``; the file header keeps its key "method", which every
    version of the pack reads (a required field), so files stay readable both ways."""
    train_config: str = "{}"
    steps: int = 0
    data_hashes: dict[str, str] = field(default_factory=dict)
    # the pack version that wrote the file; files written before it was recorded say "unknown"
    textloc_version: str = field(default_factory=pack_version)
    format_version: int = FORMAT_VERSION
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def tokens(self) -> list[str]:
        return [c["token"] for c in self.concepts]

    @property
    def concept_names(self) -> list[str]:
        return [c["name"] for c in self.concepts]

    @property
    def class_words(self) -> list[str]:
        return [c.get("class_word", "") for c in self.concepts]

    def to_header(self) -> dict[str, str]:
        header = {
            "format": FORMAT_NAME,
            "format_version": str(self.format_version),
            "textloc_version": self.textloc_version,
            "base_fingerprint": self.base_fingerprint,
            "architecture": json.dumps(self.architecture, sort_keys=True),
            "concepts": json.dumps(self.concepts),
            # duplicated for listing tools that read one field only
            "tokens": json.dumps(self.tokens),
            "class_words": json.dumps(self.class_words),
            "method": self.guidance,
            "train_config": self.train_config,
            "steps": str(self.steps),
            "data_hashes": json.dumps(self.data_hashes, sort_keys=True),
        }
        for key, value in self.extra.items():
            header[f"extra.{key}"] = str(value)
        return header

    @classmethod
    def from_header(cls, header: Mapping[str, str], path: str | os.PathLike = "adapter") -> AdapterMetadata:
        if header.get("format") != FORMAT_NAME:
            raise ValueError(
                f"adapter file {path} is not a textloc adapter (format {header.get('format')!r}): "
                "load ComfyUI/diffusers files with their own loaders, or re-save it with save_adapter"
            )
        missing = [key for key in _REQUIRED_HEADER if key not in header]
        if missing:
            raise ValueError(f"adapter file {path} lacks header fields {missing}: it is damaged; {_FIX_CORRUPT}")
        try:
            version = int(header["format_version"])
        except ValueError:
            raise ValueError(
                f"adapter file {path}: format_version {header['format_version']!r} is not a number"
            ) from None
        if version > FORMAT_VERSION:
            raise ValueError(
                f"adapter file {path} has format version {version}, newer than this textloc "
                f"understands ({FORMAT_VERSION}): update the textloc node pack"
            )
        refuse_newer_major(path, header.get("textloc_version", UNKNOWN))
        try:
            meta = cls(
                base_fingerprint=header["base_fingerprint"],
                architecture=json.loads(header["architecture"]),
                concepts=json.loads(header["concepts"]),
                guidance=header["method"],
                train_config=header.get("train_config", "{}"),
                steps=int(header.get("steps", "0")),
                data_hashes=json.loads(header.get("data_hashes", "{}")),
                textloc_version=header.get("textloc_version", UNKNOWN),
                format_version=version,
                extra={k[len("extra.") :]: v for k, v in header.items() if k.startswith("extra.")},
            )
            meta.check_types()
        except (json.JSONDecodeError, ValueError, TypeError) as exc:
            raise ValueError(f"adapter file {path}: header is unreadable ({exc}); {_FIX_CORRUPT}") from exc
        return meta

    def check_types(self) -> None:
        """Raise TypeError unless the JSON-decoded fields have the shapes the code relies on."""
        arch_ok = isinstance(self.architecture, dict) and all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(n, int) for n in v)
            for k, v in self.architecture.items()
        )
        if not arch_ok:
            raise TypeError("architecture must map layer names to lists of ints")
        concepts_ok = isinstance(self.concepts, list) and all(
            isinstance(c, dict) and isinstance(c.get("token"), str) and isinstance(c.get("name"), str)
            for c in self.concepts
        )
        if not concepts_ok:
            raise TypeError("concepts must be a list of objects with 'name' and 'token' strings")
        if not (isinstance(self.data_hashes, dict) and all(isinstance(v, str) for v in self.data_hashes.values())):
            raise TypeError("data_hashes must map names to sha256 strings")


@dataclass
class Adapter:
    """Learned K/V deltas + token embeddings + metadata. See the module docstring."""

    kv_deltas: dict[str, torch.Tensor]
    token_embeddings: dict[str, torch.Tensor]
    metadata: AdapterMetadata

    def __post_init__(self) -> None:
        self.token_embeddings = {t: (e.unsqueeze(0) if e.dim() == 1 else e) for t, e in self.token_embeddings.items()}
        self.validate()

    def validate(self, path: str | os.PathLike = "adapter") -> None:
        """Raise ValueError if keys, shapes and metadata do not fit together."""
        for key, delta in self.kv_deltas.items():
            if not key.endswith(tuple(f".{p}" for p in PROJECTIONS)):
                raise ValueError(f"{path}: K/V key {key!r} must end in .to_k or .to_v")
            expected = self.metadata.architecture.get(key)
            if expected is None:
                raise ValueError(f"{path}: K/V delta {key!r} is not in the adapter's architecture signature")
            if list(delta.shape) != list(expected):
                raise ValueError(f"{path}: K/V delta {key!r} has shape {list(delta.shape)}, signature says {expected}")
        for token, emb in self.token_embeddings.items():
            if emb.dim() != 2:
                raise ValueError(f"{path}: embedding of token {token!r} must be (n_vectors, D), got {list(emb.shape)}")
        tokens = self.metadata.tokens
        if len(set(tokens)) != len(tokens):
            raise ValueError(f"{path}: tokens {tokens} repeat; every concept needs its own token")
        if set(tokens) != set(self.token_embeddings):
            raise ValueError(
                f"{path}: concept tokens {sorted(tokens)} do not match the stored embeddings "
                f"{sorted(self.token_embeddings)}"
            )

    @property
    def tokens(self) -> list[str]:
        return self.metadata.tokens


def save_adapter(adapter: Adapter, path: str | os.PathLike) -> Path:
    """Write ``adapter`` to ``path`` (a ``.safetensors`` file) atomically."""
    adapter.validate()
    tensors = {f"{_KV_PREFIX}{k}": v.float() if v.dtype == torch.float64 else v for k, v in adapter.kv_deltas.items()}
    tensors.update({f"{_EMB_PREFIX}{t}": e for t, e in adapter.token_embeddings.items()})
    return safe_io.save_tensors(path, tensors, adapter.metadata.to_header())


def read_adapter_metadata(path: str | os.PathLike) -> AdapterMetadata:
    """The adapter's metadata from the file header only (no tensor is read)."""
    header = safe_io.read_metadata(path, "adapter file", _FIX_CORRUPT)
    return AdapterMetadata.from_header(header, path)


def load_adapter(path: str | os.PathLike) -> Adapter:
    """Read and verify an adapter file written by ``save_adapter``.

    Raises FileNotFoundError for a missing file and ValueError for a truncated or corrupt
    one ("adapter file X is truncated or corrupt (...): re-save it or retrain"), a file of
    another format, a newer format version, or inconsistent contents.
    """
    tensors, header = safe_io.load_tensors(path, "adapter file", _FIX_CORRUPT)
    metadata = AdapterMetadata.from_header(header, path)
    deltas = {k[len(_KV_PREFIX) :]: v for k, v in tensors.items() if k.startswith(_KV_PREFIX)}
    embeddings = {k[len(_EMB_PREFIX) :]: v for k, v in tensors.items() if k.startswith(_EMB_PREFIX)}
    check_finite(tensors, path)
    adapter = Adapter.__new__(Adapter)
    adapter.kv_deltas, adapter.token_embeddings, adapter.metadata = deltas, embeddings, metadata
    adapter.validate(path)
    return adapter


def check_finite(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Refuse an adapter whose K/V deltas or tokens hold NaN or infinity: applied, such values
    turn every image black or NaN. The file is named by its file name only (messages may be
    shown over HTTP, where the server's folders are not the user's business)."""
    bad = [name for name, tensor in tensors.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise ValueError(
            f"adapter file {Path(path).name} holds NaN or infinite values ({shown}): it cannot be applied; "
            "retrain it, or continue training from a checkpoint written before the values broke"
        )
