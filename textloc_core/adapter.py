"""The adapter: what a Textual Localization run produces, and how it goes onto a model.

An ``Adapter`` holds

* ``kv_deltas``: ``"<canonical attn2 name>.to_k"`` / ``".to_v"`` -> ``W - W0`` (weight-shaped),
  keyed by the LDM / ComfyUI layer names (``input_blocks.1.1.transformer_blocks.0.attn2``);
* ``token_embeddings``: identifier token -> ``(n_vectors, D)`` embedding;
* ``metadata``: ``AdapterMetadata`` (base fingerprint, architecture signature, concepts,
  method, TrainConfig JSON, steps, data hashes, versions).

It is stored as one safetensors file whose header carries the metadata as strings, so a
node can list adapters (``read_adapter_metadata``) without loading a tensor. Saving is
atomic; loading verifies a checksum, the required keys and the format version.

``apply_adapters`` turns base K/V weights into patched ones (``W0 + sum strength_i * delta_i``)
after checking that each adapter was trained on this architecture and this base model.
Writers for ComfyUI's and diffusers' own formats live in ``adapter_formats``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import safe_io

FORMAT_NAME = "textloc.adapter"
FORMAT_VERSION = 1
"""Bump when the file layout changes incompatibly; ``load_adapter`` refuses newer files."""

_KV_PREFIX = "kv."
_EMB_PREFIX = "emb."
_PROJECTIONS = ("to_k", "to_v")
_REQUIRED_HEADER = ("format", "format_version", "base_fingerprint", "architecture", "concepts", "method")
_FIX_CORRUPT = "re-save it or retrain"


def textloc_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("textloc")
    except metadata.PackageNotFoundError:
        import sys

        # relative to this package: inside ComfyUI it is custom_nodes.textloc.textloc_core
        return getattr(sys.modules[__package__], "__version__", "unknown")


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
    ``init_word`` (``textloc_core.concepts.Concept`` fields). ``data_hashes``: source ->
    sha256 of each training image and mask, so a result can be traced to its data.
    """

    base_fingerprint: str
    architecture: dict[str, list[int]]
    concepts: list[dict]
    method: str
    train_config: str = "{}"
    steps: int = 0
    data_hashes: dict[str, str] = field(default_factory=dict)
    textloc_version: str = field(default_factory=textloc_version)
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
            "method": self.method,
            "train_config": self.train_config,
            "steps": str(self.steps),
            "data_hashes": json.dumps(self.data_hashes, sort_keys=True),
        }
        for key, value in self.extra.items():
            header[f"extra.{key}"] = str(value)
        return header

    @classmethod
    def from_header(cls, header: Mapping[str, str], path: str | os.PathLike = "adapter") -> "AdapterMetadata":
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
            raise ValueError(f"adapter file {path}: format_version {header['format_version']!r} is not a number") from None
        if version > FORMAT_VERSION:
            raise ValueError(
                f"adapter file {path} has format version {version}, newer than this textloc "
                f"understands ({FORMAT_VERSION}): update the textloc node pack"
            )
        try:
            meta = cls(
                base_fingerprint=header["base_fingerprint"],
                architecture=json.loads(header["architecture"]),
                concepts=json.loads(header["concepts"]),
                method=header["method"],
                train_config=header.get("train_config", "{}"),
                steps=int(header.get("steps", "0")),
                data_hashes=json.loads(header.get("data_hashes", "{}")),
                textloc_version=header.get("textloc_version", "unknown"),
                format_version=version,
                extra={k[len("extra."):]: v for k, v in header.items() if k.startswith("extra.")},
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
            if not key.endswith(tuple(f".{p}" for p in _PROJECTIONS)):
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
    deltas = {k[len(_KV_PREFIX):]: v for k, v in tensors.items() if k.startswith(_KV_PREFIX)}
    embeddings = {k[len(_EMB_PREFIX):]: v for k, v in tensors.items() if k.startswith(_EMB_PREFIX)}
    adapter = Adapter.__new__(Adapter)
    adapter.kv_deltas, adapter.token_embeddings, adapter.metadata = deltas, embeddings, metadata
    adapter.validate(path)
    return adapter


def _describe_mismatch(adapter_arch: Mapping[str, list[int]], model_arch: Mapping[str, list[int]]) -> str:
    only_adapter = sorted(set(adapter_arch) - set(model_arch))
    only_model = sorted(set(model_arch) - set(adapter_arch))
    reshaped = sorted(k for k in set(adapter_arch) & set(model_arch) if list(adapter_arch[k]) != list(model_arch[k]))
    parts = [f"adapter has {len(adapter_arch)} K/V layers, the model {len(model_arch)}"]
    if only_adapter:
        parts.append(f"e.g. {only_adapter[0]!r} is missing from the model")
    if only_model:
        parts.append(f"e.g. the model's {only_model[0]!r} is not in the adapter")
    if reshaped:
        k = reshaped[0]
        parts.append(f"{k!r} is {list(adapter_arch[k])} in the adapter but {list(model_arch[k])} in the model")
    return "; ".join(parts)


def check_compatible(
    adapter: Adapter,
    kv_weights: Mapping[str, torch.Tensor],
    base_fingerprint: str | None = None,
    *,
    allow_base_mismatch: bool = False,
    name: str = "adapter",
) -> None:
    """Raise ValueError unless ``adapter`` fits the model whose K/V weights are ``kv_weights``.

    The architecture must match exactly (it cannot be forced: the shapes would not add up).
    A different base fingerprint (same architecture, other weights: a different checkpoint
    or fine-tune) is an error unless ``allow_base_mismatch``.
    """
    model_arch = architecture_signature(kv_weights)
    if adapter.metadata.architecture != model_arch:
        raise ValueError(
            f"{name} was trained for another model architecture ({_describe_mismatch(adapter.metadata.architecture, model_arch)}): "
            "load it onto the model family it was trained on (SD1.x, SD2.x or SDXL)"
        )
    expected = adapter.metadata.base_fingerprint
    if base_fingerprint is not None and expected and expected != base_fingerprint and not allow_base_mismatch:
        raise ValueError(
            f"{name} was trained on base model {expected}, but this model is {base_fingerprint}: load the "
            "checkpoint it was trained on, or set allow_base_mismatch (ComfyUI: 'ignore base mismatch') "
            "to apply it anyway, usually at a lower strength"
        )


def composed_deltas(
    adapters: Iterable[tuple[Adapter, float]], kv_weights: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Sum of ``strength * delta`` per K/V key over several adapters (float32)."""
    total: dict[str, torch.Tensor] = {}
    for adapter, strength in adapters:
        for key, delta in adapter.kv_deltas.items():
            scaled = delta.to(device=kv_weights[key].device, dtype=torch.float32) * float(strength)
            total[key] = total[key] + scaled if key in total else scaled
    return total


def composed_embeddings(adapters: Iterable[Adapter]) -> dict[str, torch.Tensor]:
    """All adapters' token embeddings in one dict; a token two adapters define differently is an error."""
    out: dict[str, torch.Tensor] = {}
    for adapter in adapters:
        for token, emb in adapter.token_embeddings.items():
            if token in out and not torch.equal(out[token], emb):
                raise ValueError(
                    f"token {token!r} is defined by two of the adapters being combined with different "
                    "embeddings: retrain one of them with another token"
                )
            out[token] = emb
    return out


def apply_adapters(
    kv_weights: Mapping[str, torch.Tensor],
    adapters: Iterable[tuple[Adapter, float]],
    base_fingerprint: str | None = None,
    *,
    allow_base_mismatch: bool = False,
) -> dict[str, torch.Tensor]:
    """Patched K/V weights ``W0 + sum_i strength_i * delta_i`` for every key any adapter touches.

    ``kv_weights`` (canonical key -> W0) is not modified: keeping it is the restore. The result
    has each weight's own dtype and device; the sum is formed in float32.
    """
    pairs = list(adapters)
    for index, (adapter, _strength) in enumerate(pairs):
        check_compatible(adapter, kv_weights, base_fingerprint, allow_base_mismatch=allow_base_mismatch, name=f"adapter {index + 1}")
    deltas = composed_deltas(pairs, kv_weights)
    return {key: (kv_weights[key].float() + delta).to(kv_weights[key].dtype) for key, delta in deltas.items()}


def kv_weights_of(layers: Mapping[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """``{"<canonical>.to_k": weight, ...}`` from canonical layer name -> attn2 module."""
    return {f"{name}.{proj}": getattr(attn, proj).weight for name, attn in layers.items() for proj in _PROJECTIONS}


FINGERPRINT_DTYPE = torch.float16
"""The dtype K/V weights are hashed in (see ``base_model_fingerprint``)."""


def base_model_fingerprint(kv_weights: Mapping[str, torch.Tensor]) -> str:
    """The base-model fingerprint: a short sha256 of the attn2 K/V weights keyed
    ``"<canonical layer>.to_k"`` / ``".to_v"``, in sorted key order.

    Every backend (diffusers, ComfyUI) computes it here, so one checkpoint has one
    fingerprint everywhere. The weights are hashed as float16, whatever dtype the model was
    loaded in: an fp16 checkpoint loaded in fp32 (or fp16) hashes its exact stored values, and
    an fp32 checkpoint loaded in fp16 hashes the same values as when it is loaded in fp32
    (fp32 -> fp16 rounds to nearest either way), so the dtype a user picks in a loader never
    reads as "another base model".

    Residual edge case: bf16 (and fp8) keep fewer mantissa bits than fp16, so an fp32 or fp16
    checkpoint *loaded in* bf16 has already lost bits and hashes differently from the same
    checkpoint loaded in fp16/fp32. A bf16-stored checkpoint is consistent in any dtype
    (bf16 -> fp32 is exact, and bf16 -> fp16 rounds as bf16 -> fp32 -> fp16 does). Where a
    user hits the edge case, ``allow_base_mismatch`` overrides the check.
    """
    digest = hashlib.sha256()
    for key in sorted(kv_weights):
        # cast on the weight's own device first: half the bytes to copy off a GPU
        weight = kv_weights[key].detach().to(FINGERPRINT_DTYPE).cpu().contiguous()
        digest.update(f"{key}{tuple(weight.shape)}".encode())
        digest.update(weight.numpy().tobytes())
    return digest.hexdigest()[:16]


class PatchedModules:
    """Apply adapters to live ``nn.Linear`` K/V modules in place, and put the originals back.

    ``modules``: canonical key (``"<layer>.to_k"``) -> the ``nn.Linear``. Use as a context
    manager, or call ``restore()``; the originals are kept as CPU copies meanwhile.
    """

    def __init__(self, modules: Mapping[str, torch.nn.Module], adapters: Iterable[tuple[Adapter, float]], base_fingerprint: str | None = None, *, allow_base_mismatch: bool = False):
        weights = {key: module.weight for key, module in modules.items()}
        patched = apply_adapters(weights, adapters, base_fingerprint, allow_base_mismatch=allow_base_mismatch)
        self._modules = dict(modules)
        self._originals = {key: weights[key].detach().to("cpu", copy=True) for key in patched}
        with torch.no_grad():
            for key, value in patched.items():
                weights[key].copy_(value)

    def restore(self) -> None:
        with torch.no_grad():
            for key, original in self._originals.items():
                self._modules[key].weight.copy_(original)
        self._originals.clear()

    def __enter__(self) -> "PatchedModules":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()
