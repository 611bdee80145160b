"""What the pack's V3 node schemas share: the socket types of its own values, categories, widgets (``comfy_api.latest``, as in ComfyUI 0.3.64 and 0.33.0).

The pack uses only what both versions' ``comfy_api.latest`` define: ``ComfyExtension`` (the
top-level __init__.py), ``io.ComfyNode``, ``io.Schema``, ``io.<Type>.Input/Output`` (Boolean,
Int, Float, String, Combo, Image, Mask, Model, Clip, Vae), ``io.Custom``, ``io.Hidden.unique_id``,
``io.NodeOutput`` and ``ui.PreviewText`` (tests/integration/test_comfy_surface.py checks them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from comfy_api.latest import io

#: the socket type of a concept set (``textloc_core.data.concepts.ConceptSet``)
CONCEPTS = io.Custom("TEXTLOC_CONCEPTS")
#: the socket type of an adapter (``textloc_core.adapters.adapter.Adapter``)
ADAPTER = io.Custom("TEXTLOC_ADAPTER")

CATEGORY = "textloc"
TINYWORLD_CATEGORY = "textloc/tinyworld"
#: the largest seed of the pack's seed widgets (they seed torch generators and numpy)
SEED_MAX = 2**31 - 1


def named(kind: type[io.ComfyTypeIO], name: str) -> io.Output:
    """An output called ``name`` in the UI (its RETURN_NAMES entry). Both versions name an output
    by its display_name (0.3.64 falls back to the type, not the id). The id is ComfyUI-internal
    and suffixed, because 0.3.64 refuses an output id equal to an input's (``images``, ``tokens``)."""
    return kind.Output(f"{name}_out", display_name=name)


def require_finite(**values: float) -> None:
    """Refuse NaN or infinite widget values (typed into a FLOAT widget or sent over the API):
    range checks let NaN through, and it would end as a black image or a diverged training."""
    for name, value in values.items():
        if not math.isfinite(value):
            raise ValueError(f"{name}: {value} is not a finite number; enter a number such as the widget's default")


TINYWORLD_NODE_PREFIX = "TextLocTinyWorld"
"""The node ids of TinyWorld's nodes, which sit in the ``TINYWORLD_CATEGORY`` submenu."""


@dataclass(frozen=True)
class NodeText:
    """What the UI shows of one textloc node: its id, menu name, description and a tooltip per
    input (input name -> the text the UI shows). Its inputs are built from the table, so none can
    lack its tooltip (a name missing from the table fails when the server lists the nodes)."""

    node_id: str
    display_name: str
    description: str
    tooltips: dict[str, str]

    def schema(self, **fields) -> io.Schema:
        """The node's ``io.Schema``, in the pack's category (the TinyWorld submenu for ids starting
        ``TINYWORLD_NODE_PREFIX``); ``fields`` are the rest (inputs, outputs, is_output_node, hidden)."""
        category = TINYWORLD_CATEGORY if self.node_id.startswith(TINYWORLD_NODE_PREFIX) else CATEGORY
        return io.Schema(
            node_id=self.node_id,
            display_name=self.display_name,
            category=category,
            description=self.description,
            **fields,
        )

    def input(self, kind: type[io.ComfyTypeIO], name: str, **options):
        """``kind.Input(name, **options)`` (``kind``: ``io.Int``, ``io.Model``, ``CONCEPTS``...)
        with the table's tooltip for ``name``."""
        return kind.Input(name, tooltip=self.tooltips[name], **options)

    def seed(self, maximum: int = SEED_MAX) -> io.Int.Input:
        """The ``seed`` widget (the frontend adds its "control after generate" by the name)."""
        return self.input(io.Int, "seed", default=0, min=0, max=maximum)
