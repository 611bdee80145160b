"""diffusers UNet module names -> LDM / ComfyUI module names, for attn2 layers.

Adapters are keyed by the LDM names ComfyUI uses ("input_blocks.1.1.transformer_blocks.0.attn2"),
so a diffusers-trained adapter loads in ComfyUI and vice versa. The mapping is a pure function
of the UNet's config (``layers_per_block`` and the down/up block types): LDM numbers its input
blocks as one flat list (conv_in, then per level ``layers_per_block`` resnet+transformer pairs
and one downsampler for every level but the last), and its output blocks as one flat list of
``layers_per_block + 1`` entries per level, each a resnet at ``.0`` followed by the transformer
at ``.1``. Nothing here imports diffusers; ``config`` may be a diffusers ``FrozenDict``, a plain
dict or any object with those attributes.
"""

from __future__ import annotations

import re
from typing import Any

_DOWN = re.compile(r"^down_blocks\.(\d+)\.attentions\.(\d+)\.(transformer_blocks\.\d+\.attn2)$")
_MID = re.compile(r"^mid_block\.attentions\.(\d+)\.(transformer_blocks\.\d+\.attn2)$")
_UP = re.compile(r"^up_blocks\.(\d+)\.attentions\.(\d+)\.(transformer_blocks\.\d+\.attn2)$")


def _get(config: Any, key: str) -> Any:
    if isinstance(config, dict) or hasattr(config, "keys"):
        return config[key]
    return getattr(config, key)


def _per_block(value: Any, count: int) -> list[int]:
    """``layers_per_block`` is an int in SD1/2/XL configs, a per-level list in some others."""
    if isinstance(value, int):
        return [value] * count
    values = [int(v) for v in value]
    if len(values) != count:
        raise ValueError(f"unet config: layers_per_block {values} does not have one entry per block ({count})")
    return values


def diffusers_to_ldm_attn2(name: str, config: Any) -> str:
    """LDM name of the diffusers attn2 module ``name`` in a UNet built from ``config``.

    ``down_blocks.1.attentions.0.transformer_blocks.0.attn2`` ->
    ``input_blocks.4.1.transformer_blocks.0.attn2`` for SD1.5. Raises ValueError for a name
    that is not a UNet attn2 module path.
    """
    n_down = len(_get(config, "down_block_types"))
    down_layers = _per_block(_get(config, "layers_per_block"), n_down)
    if match := _DOWN.match(name):
        level, index, tail = int(match[1]), int(match[2]), match[3]
        # conv_in is input block 0; each earlier level adds its pairs plus one downsampler.
        block = 1 + sum(down_layers[b] + 1 for b in range(level)) + index
        return f"input_blocks.{block}.1.{tail}"
    if match := _MID.match(name):
        # LDM middle block: resnet, transformer, resnet (, transformer, resnet ...).
        return f"middle_block.{1 + 2 * int(match[1])}.{match[2]}"
    if match := _UP.match(name):
        level, index, tail = int(match[1]), int(match[2]), match[3]
        up_layers = list(reversed(down_layers))
        block = sum(up_layers[b] + 1 for b in range(level)) + index
        return f"output_blocks.{block}.1.{tail}"
    raise ValueError(
        f"layer name {name!r} is not a diffusers UNet attn2 path "
        "(down_blocks.I.attentions.J.transformer_blocks.K.attn2, mid_block..., up_blocks...)"
    )


def ldm_to_diffusers_attn2(name: str, config: Any) -> str:
    """Inverse of ``diffusers_to_ldm_attn2`` (for loading LDM-keyed adapters into diffusers)."""
    n_down = len(_get(config, "down_block_types"))
    down_layers = _per_block(_get(config, "layers_per_block"), n_down)
    if mid := re.match(r"^middle_block\.(\d+)\.(transformer_blocks\.\d+\.attn2)$", name):
        return f"mid_block.attentions.{(int(mid[1]) - 1) // 2}.{mid[2]}"
    match = re.match(r"^(input_blocks|output_blocks)\.(\d+)\.(\d+)\.(transformer_blocks\.\d+\.attn2)$", name)
    if not match:
        raise ValueError(
            f"layer name {name!r} is not an LDM attn2 path (input_blocks.N.1.transformer_blocks.K.attn2, ...)"
        )
    kind, block, tail = match[1], int(match[2]), match[4]
    if kind == "input_blocks":
        start = 1
        for level, layers in enumerate(down_layers):
            if start <= block < start + layers:
                return f"down_blocks.{level}.attentions.{block - start}.{tail}"
            start += layers + 1
    else:
        start = 0
        for level, layers in enumerate(reversed(down_layers)):
            if start <= block < start + layers + 1:
                return f"up_blocks.{level}.attentions.{block - start}.{tail}"
            start += layers + 1
    raise ValueError(f"layer name {name!r}: block {block} does not hold attention in this UNet config")
