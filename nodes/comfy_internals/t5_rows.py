"""A Flux / SD3 token's T5 part in ComfyUI (what Apply Adapter needs): rows of the encoded context
overwritten after T5 has run.

A diffusion-transformer identifier's T5 part is a vector in T5's *output* space (docs/dit.md,
"The identifier token"), so no token entry ComfyUI's text encoders read can carry it (a tensor
entry would be an input embedding). ``with_t5_rows`` gives a CLIP clone whose text encoder's
output context has chosen T5 rows replaced.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .text import t5_context_start

__all__ = ["RowsFor", "with_t5_rows"]


RowsFor = Callable[[dict], list[tuple[int, torch.Tensor]]]
"""Token dict -> [(flat position in its T5 token list, vector)] to write into the context."""


class _T5RowsEncoder:
    """A CLIP's text encoder seen through ``rows_for``: ``encode_token_weights`` returns the
    wrapped encoder's result with those T5 rows of the context overwritten; everything else is
    the wrapped encoder's."""

    def __init__(self, inner, rows_for: RowsFor):
        self.inner = inner
        self.rows_for = rows_for

    def encode_token_weights(self, tokens):
        out = self.inner.encode_token_weights(tokens)
        rows = self.rows_for(tokens)
        if not rows:
            return out
        context = out[0].clone()
        start = t5_context_start(context, tokens)
        for position, vector in rows:
            if vector.shape[-1] != context.shape[-1]:
                raise ValueError(
                    f"token: its T5 part is {vector.shape[-1]} values wide, this text encoder's T5 gives "
                    f"{context.shape[-1]}; was the adapter trained on another model?"
                )
            context[:, start + position] = vector.to(context.device, context.dtype)
        return (context, *out[1:])

    def __getattr__(self, name):
        if name == "inner":  # not set yet (copy / unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


def with_t5_rows(clip, rows_for: RowsFor):
    """A clone of ``clip`` whose encoded contexts get ``rows_for(tokens)`` written into their T5
    rows (a clone that has such rows already gets the new rule instead; ``rows_for`` sees every
    token dict, so it can serve several adapters).

    Relies on: ``comfy.sd.CLIP.cond_stage_model`` (``CLIP.clone`` shares it downstream), whose
    ``encode_token_weights(tokens)`` ``CLIP.encode_from_tokens`` calls and which returns
    (context, pooled, ...), T5's rows where ``t5_context_start`` says
    (``FluxClipModel``, ``SD3ClipModel``)."""
    new_clip = clip.clone()
    inner = new_clip.cond_stage_model
    if isinstance(inner, _T5RowsEncoder):
        inner = inner.inner
    new_clip.cond_stage_model = _T5RowsEncoder(inner, rows_for)
    return new_clip
