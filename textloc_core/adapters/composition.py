"""Several adapters on one model: checked against it, summed, and applied while a block runs.

Every path that puts adapters onto a model goes through ``check_compatible``: the ComfyUI
Apply node (which lets ComfyUI's ModelPatcher add the deltas) and ``applied`` here (forward
hooks on a diffusers or any other backend's UNet, for the Python API and the evaluations).
An adapter is an ``Adapter`` or a training result straight from ``train`` (anything with
``kv_deltas`` and ``token_embeddings``; without ``metadata``, the shapes of its deltas stand for
its architecture and its ``fingerprint`` for its base model).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch

from ..attention.cross_attention import KVDeltaInjector
from ..backends.base import ModelBundle
from ..backends.fingerprint import kv_projections
from .adapter import architecture_signature


def _identity(adapter, model_arch: dict[str, list[int]]) -> tuple[dict[str, list[int]], str]:
    """(architecture signature, base fingerprint) the adapter was trained with."""
    metadata = getattr(adapter, "metadata", None)
    if metadata is not None:
        return metadata.architecture, metadata.base_fingerprint
    # a result straight from training: its deltas (any subset of the layers) carry the shapes
    signature = architecture_signature(adapter.kv_deltas)
    if set(signature) <= set(model_arch):
        signature = {**model_arch, **signature}
    return signature, getattr(adapter, "fingerprint", "")


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
    adapter,
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
    architecture, expected = _identity(adapter, model_arch)
    if architecture != model_arch:
        raise ValueError(
            f"{name} was trained for another model architecture ({_describe_mismatch(architecture, model_arch)}): "
            "load it onto the model family it was trained on (SD1.x, SD2.x or SDXL)"
        )
    if base_fingerprint is not None and expected and expected != base_fingerprint and not allow_base_mismatch:
        raise ValueError(
            f"{name} was trained on base model {expected}, but this model is {base_fingerprint}: load the "
            "checkpoint it was trained on, or set allow_base_mismatch (ComfyUI: 'ignore base mismatch') "
            "to apply it anyway, usually at a lower strength"
        )


def composed_deltas(
    adapters: Iterable[tuple[object, float]],
    kv_weights: Mapping[str, torch.Tensor],
    base_fingerprint: str | None = None,
    *,
    allow_base_mismatch: bool = False,
) -> dict[str, torch.Tensor]:
    """Sum of ``strength * delta`` per K/V key over several (adapter, strength) pairs, in
    float32 on each weight's device, after ``check_compatible`` of every adapter."""
    pairs = list(adapters)
    for index, (adapter, _strength) in enumerate(pairs):
        check_compatible(
            adapter, kv_weights, base_fingerprint, allow_base_mismatch=allow_base_mismatch, name=f"adapter {index + 1}"
        )
    total: dict[str, torch.Tensor] = {}
    for adapter, strength in pairs:
        for key, delta in adapter.kv_deltas.items():
            scaled = delta.to(device=kv_weights[key].device, dtype=torch.float32) * float(strength)
            total[key] = total[key] + scaled if key in total else scaled
    return total


def composed_embeddings(adapters: Iterable) -> dict[str, torch.Tensor]:
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


@contextmanager
def applied(
    bundle: ModelBundle,
    adapters: Sequence,
    strengths: Sequence[float] | None = None,
    *,
    allow_base_mismatch: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """While open, the UNet computes with ``W0 + sum strength_i * delta_i`` on every text K/V layer
    (through forward hooks; the weights themselves are never written), and yields the token
    embeddings to pass to ``bundle.text.encode``. Each adapter must fit the model
    (``check_compatible``; ``allow_base_mismatch`` as there); a token defined twice is an error."""
    if not adapters:  # the base model: nothing to hook
        yield {}
        return
    strengths = list(strengths) if strengths is not None else [1.0] * len(adapters)
    if len(strengths) != len(adapters):
        raise ValueError(f"strengths: {len(strengths)} values for {len(adapters)} adapters")
    denoiser = bundle.denoiser
    projections = kv_projections(denoiser)
    total = composed_deltas(
        zip(adapters, strengths),
        {k: m.weight for k, m in projections.items()},
        bundle.fingerprint,
        allow_base_mismatch=allow_base_mismatch,
    )
    embeddings = composed_embeddings(adapters)
    with torch.inference_mode(False), KVDeltaInjector(None, projections=projections) as injector:
        injector.load(total)
        for delta in injector.deltas.values():
            delta.requires_grad_(False)
        yield {t: v.to(bundle.device) for t, v in embeddings.items()}
