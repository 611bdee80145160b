"""Frozen base weights stored in float8 and upcast per layer for compute (diffusers backend).

Flux (12 B parameters) and SD3.5 Large (8 B) fit a 24 GB card for training only with an 8-bit
base model, as ComfyUI's loaders give it (``weight_dtype`` fp8_e4m3fn) and as peers train.
``store_fp8`` turns every ``nn.Linear`` of a module into an ``Fp8Linear``: its weight is kept
in ``float8_e4m3fn`` and cast to the compute dtype inside each call. The cast copy is not what
autograd keeps: ``_UpcastLinear`` saves the 8-bit weight and casts it again in backward, so
the activations' gradients (which reach the K/V deltas and the tokens) cost no full-precision
copy of the model. Base weights never get gradients; forward hooks on the layers (the K/V
deltas) work as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FP8 = torch.float8_e4m3fn
"""The storage dtype (ComfyUI's ``fp8_e4m3fn``)."""
WEIGHT_DTYPES = ("default", "fp8_e4m3fn")
"""How a base model's linear weights are stored: as loaded, or in float8 (ComfyUI's names)."""


class _UpcastLinear(torch.autograd.Function):
    """``x @ W.T + b`` with ``W`` cast to ``x``'s dtype; backward re-casts the stored 8-bit ``W``."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(weight)
        return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return grad.matmul(weight.to(grad.dtype)), None, None


class Fp8Linear(nn.Linear):
    """An ``nn.Linear`` whose frozen weight is float8; calls compute in ``compute_dtype``, or in
    autocast's dtype where autocast is on."""

    compute_dtype: torch.dtype = torch.bfloat16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.compute_dtype
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
        with torch.autocast(x.device.type, enabled=False):
            return _UpcastLinear.apply(x.to(dtype), self.weight, self.bias)


def store_fp8(module: nn.Module, compute_dtype: torch.dtype) -> int:
    """Store every ``nn.Linear`` weight of ``module`` in float8 (biases stay as they are),
    computing in ``compute_dtype``; returns how many layers changed. Fails, naming the fix,
    where this torch has no float8."""
    if not hasattr(torch, "float8_e4m3fn"):
        raise ValueError(f"weight_dtype fp8_e4m3fn: torch {torch.__version__} has no float8; use default")
    if compute_dtype == FP8:
        raise ValueError("compute_dtype: float8 is a storage dtype; compute in bfloat16, float16 or float32")
    changed = 0
    for layer in module.modules():
        if isinstance(layer, nn.Linear) and not isinstance(layer, Fp8Linear):
            layer.weight.requires_grad_(False)
            layer.weight.data = layer.weight.data.to(FP8)
            layer.__class__ = Fp8Linear
            layer.compute_dtype = compute_dtype
            changed += 1
    module._textloc_compute_dtype = compute_dtype
    return changed


def compute_dtype_of(module: nn.Module) -> torch.dtype:
    """The dtype ``module`` computes in: the one ``store_fp8`` recorded, else its first weight's."""
    return getattr(module, "_textloc_compute_dtype", None) or next(module.parameters()).dtype


def apply_weight_dtype(modules: list[nn.Module], weight_dtype: str) -> None:
    """``weight_dtype`` "fp8_e4m3fn": ``store_fp8`` each module, computing in its current dtype."""
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype: {weight_dtype!r} is not one of {', '.join(WEIGHT_DTYPES)}")
    if weight_dtype == "fp8_e4m3fn":
        for module in modules:
            store_fp8(module, compute_dtype_of(module))
