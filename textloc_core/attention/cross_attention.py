"""Cross-attention (attn2) discovery, trainable K/V deltas, and token-map capture.

Both diffusers and ComfyUI build their UNet cross-attention as a module named ``attn2``
with ``to_q``/``to_k``/``to_v``/``to_out`` children, and both call ``attn2.to_k(context)``
and ``attn2.to_v(context)`` as modules. That is the whole framework-independent surface we
rely on:

* ``find_cross_attention`` walks ``named_modules()``; no hard-coded layer list.
* ``KVDeltaInjector`` adds a trainable delta to ``to_k``/``to_v`` through forward hooks, so
  state-dict keys (and therefore ComfyUI's weight patching) are untouched. The delta starts
  at zero, so training it is training W_K/W_V; what we store is exactly ComfyUI's ``diff``
  patch. Following Custom Diffusion, the start-of-text position's key/value are detached.
* ``AttentionRouter`` is what a backend calls instead of its fused attention for the few
  layers where a token map is needed. It computes softmax explicitly (cross-attention has
  only ~77 keys, so this is cheap) and keeps, per layer, just the selected tokens'
  probabilities averaged over heads. Self-attention and unselected layers never come here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .joint_maps import image_text_map

TOKENS_PER_CHUNK = 77
"""CLIP context length; long prompts are concatenated 77-token chunks, each starting with SOT."""


def find_cross_attention(unet: nn.Module) -> dict[str, nn.Module]:
    """All cross-attention modules of ``unet`` by module name, in forward order.

    A cross-attention module is one named ``...attn2`` with ``to_q``, ``to_k``, ``to_v`` and
    ``to_out`` children. Raises ValueError when there is none (the method needs them).
    """
    found = {
        name: module
        for name, module in unet.named_modules()
        if name.split(".")[-1] == "attn2" and all(hasattr(module, part) for part in ("to_q", "to_k", "to_v", "to_out"))
    }
    if not found:
        raise ValueError(
            "model: no cross-attention (attn2) layers found. Textual Localization trains the "
            "W_K/W_V of a UNet's text cross-attention; use a Stable-Diffusion-family model "
            "(SD1.x, SD2.x, SDXL)."
        )
    return found


def _sot_mask(length: int, device: torch.device) -> torch.Tensor:
    """(L, 1) bool: True at each 77-token chunk's start-of-text position."""
    return (torch.arange(length, device=device) % TOKENS_PER_CHUNK == 0).unsqueeze(-1)


class KVDeltaInjector:
    """Trainable additive deltas on text K/V linear layers: every attn2 ``to_k``/``to_v`` of a
    UNet, or the ``projections`` a backend names (a diffusion transformer's text-stream K/V).

    ``deltas`` maps ``"<module name>.to_k"`` / ``".to_v"`` (or the keys of ``projections``) to a
    float32 ``nn.Parameter`` of the linear layer's weight shape. Use as a context manager (or
    call ``remove``) so the hooks never outlive training. ``detach_start_token`` applies to CLIP
    contexts (77-token chunks opening with SOT); a T5 context has no such position.
    """

    def __init__(
        self,
        unet: nn.Module | None,
        layers: dict[str, nn.Module] | None = None,
        *,
        detach_start_token: bool = True,
        projections: dict[str, nn.Module] | None = None,
    ):
        if projections is None:
            self.layers = layers if layers is not None else find_cross_attention(unet)
            projections = {
                f"{name}.{proj}": getattr(attn, proj) for name, attn in self.layers.items() for proj in ("to_k", "to_v")
            }
        else:
            self.layers = {}
        self.detach_start_token = detach_start_token
        self.deltas: dict[str, nn.Parameter] = {}
        self.strength = 1.0
        self._handles: list = []
        for key, linear in projections.items():
            weight = linear.weight
            delta = nn.Parameter(torch.zeros(weight.shape, dtype=torch.float32, device=weight.device))
            self.deltas[key] = delta
            self._handles.append(linear.register_forward_hook(self._make_hook(delta)))

    def _make_hook(self, delta: nn.Parameter):
        def hook(_module, inputs, output):
            context = inputs[0]
            added = nn.functional.linear(context.to(delta.dtype), delta).to(output.dtype) * self.strength
            if self.detach_start_token and context.dim() == 3:
                # Custom Diffusion: the SOT token's key/value carry no gradient; its attention
                # sink must not be trained to absorb the concept.
                added = torch.where(_sot_mask(context.shape[1], context.device), added.detach(), added)
            return output + added

        return hook

    def parameters(self) -> list[nn.Parameter]:
        return list(self.deltas.values())

    def load(self, deltas: dict[str, torch.Tensor]) -> None:
        """Copy saved deltas in (resume, or continue from an adapter)."""
        with torch.no_grad():
            for key, value in deltas.items():
                if key not in self.deltas:
                    raise KeyError(f"adapter: layer {key!r} does not exist in this model")
                self.deltas[key].copy_(value.to(self.deltas[key]))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> KVDeltaInjector:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


@dataclass
class CapturedMap:
    """One attn2 call's probabilities for the selected tokens.

    ``probs``: (B, N, T) post-softmax attention of N query pixels to the T selected token
    slots, averaged over heads. ``layer`` is the canonical layer name.
    """

    layer: str
    probs: torch.Tensor


@dataclass
class AttentionRouter:
    """Explicit cross-attention for selected layers, keeping the selected tokens' maps.

    ``layers``: canonical layer names to route (None: every cross-attention layer).
    ``token_slots``: (B, T) long tensor: for each batch row, the context index of each
    of the T tracked token slots. Set by the trainer / sampler before every forward.
    ``keep_grad``: keep maps on the autograd graph (training) or detach them (preview).
    """

    layers: set[str] | None = None
    token_slots: torch.Tensor | None = None
    keep_grad: bool = True
    captured: list[CapturedMap] = field(default_factory=list)

    def selects(self, layer: str) -> bool:
        return self.layers is None or layer in self.layers

    def clear(self) -> None:
        self.captured.clear()

    def __call__(self, layer: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
        """Attention for projected q (B, N, H*d), k and v (B, L, H*d); returns (B, N, H*d).

        The batch of q may be a multiple of k's (ComfyUI batches cond/uncond): k/v are
        repeated to match, as the frameworks do.
        """
        batch, n_query, inner = q.shape
        dim_head = inner // heads
        if k.shape[0] != batch:
            repeat = batch // k.shape[0]
            k, v = k.repeat_interleave(repeat, 0), v.repeat_interleave(repeat, 0)
        qh = q.view(batch, n_query, heads, dim_head).transpose(1, 2)
        kh = k.view(batch, -1, heads, dim_head).transpose(1, 2)
        vh = v.view(batch, -1, heads, dim_head).transpose(1, 2)
        scores = torch.matmul(qh, kh.transpose(-1, -2)) * (1.0 / math.sqrt(dim_head))
        probs = scores.float().softmax(dim=-1).to(vh.dtype)
        out = torch.matmul(probs, vh).transpose(1, 2).reshape(batch, n_query, inner)
        if self.token_slots is not None:
            slots = self.token_slots.to(probs.device)
            if slots.shape[0] != batch:
                slots = slots.repeat(batch // slots.shape[0], 1)
            mean_heads = probs.float().mean(dim=1)  # (B, N, L)
            picked = torch.gather(mean_heads, 2, slots.unsqueeze(1).expand(-1, n_query, -1))
            self.keep(layer, picked)
        return out

    def capture_text_map(self, layer: str, q_image: torch.Tensor, k_text: torch.Tensor) -> None:
        """Record a joint-attention block's image-to-text map for the tracked slots.

        For blocks whose attention runs over one joint [text, image] sequence (diffusion
        transformers): ``q_image`` (B, H, N, d) image queries and ``k_text`` (B, H, T, d) text
        keys, as the block's own kernel sees them (normed, rotated). The block's output is the
        caller's fused kernel's; this only adds the map (``joint_maps.image_text_map``)."""
        if self.token_slots is None:
            return
        slots = self.token_slots.to(q_image.device)
        if slots.shape[0] != q_image.shape[0]:
            slots = slots.repeat(q_image.shape[0] // slots.shape[0], 1)
        self.keep(layer, image_text_map(q_image, k_text, slots))

    def keep(self, layer: str, picked: torch.Tensor) -> None:
        """Store one call's (B, N, T) map of the tracked slots, averaged over heads."""
        self.captured.append(CapturedMap(layer, picked if self.keep_grad else picked.detach()))


class AveragingRouter(AttentionRouter):
    """An ``AttentionRouter`` that averages each layer's maps over its calls (the sampling
    steps) instead of keeping one ``CapturedMap`` per call: the running sums stay on the
    device, and ``averaged()`` gives one map per layer for ``maps.token_maps``.

    ``keep_rows``: the batch rows whose maps count (e.g. the conditional half of a CFG
    batch); ``rows`` may be overridden where that changes from call to call. A call that
    keeps no row adds nothing.
    """

    def __init__(
        self, layers: set[str] | None = None, token_slots: torch.Tensor | None = None, keep_rows: slice | None = None
    ):
        super().__init__(layers=layers, token_slots=token_slots, keep_grad=False)
        self.keep_rows = keep_rows
        self.sums: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}

    def rows(self, batch: int) -> slice | list[int]:
        """The rows of a batch of ``batch`` whose maps are added."""
        return self.keep_rows if self.keep_rows is not None else slice(None)

    def keep(self, layer: str, picked: torch.Tensor) -> None:
        picked = picked.detach()[self.rows(picked.shape[0])].float()  # stays on the device: no sync per call
        if picked.shape[0] == 0:
            return
        if layer not in self.sums:
            self.sums[layer], self.calls[layer] = picked, 1
        elif self.sums[layer].shape == picked.shape:
            self.sums[layer] += picked
            self.calls[layer] += 1

    def averaged(self) -> list[CapturedMap]:
        """One map per layer: the mean over the calls that kept rows."""
        return [CapturedMap(layer, total / self.calls[layer]) for layer, total in self.sums.items()]
