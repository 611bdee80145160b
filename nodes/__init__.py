"""The textloc ComfyUI nodes (V3 node API, ``comfy_api.latest``).

Node modules, one node family each: concept_nodes, train_node, apply_node, preview_node,
metrics_node, tinyworld_nodes, tinyworld_reference_node. The others are what those share:
schema (socket types, widgets), comfy_backend (ComfyUI objects as the core's backends),
comfy_cancel (ComfyUI's Cancel as the core's stop), comfy_tokens (identifier tokens in
prompts), comfy_internals (the ComfyUI internals with no public surface), paths / read_access
(where nodes write and read), stock_files (stock LoRA and embedding files), tinyworld_models
(TinyWorld as MODEL/CLIP/VAE). This file only collects the node classes and registers the
``models/textloc`` folder; node ids and display names are in each class's ``define_schema``."""

from . import paths
from .apply_node import ApplyAdapter
from .concept_nodes import ConceptFolder, ConceptFromMask
from .metrics_node import ScoreImages
from .preview_node import AttentionPreview
from .tinyworld_nodes import TinyWorldConceptSet, TinyWorldLoader
from .tinyworld_reference_node import TinyWorldReferences
from .train_node import TextLocTrain

paths.register()

#: every node of the pack, in menu order; the top-level comfy_entrypoint hands ComfyUI this list
NODE_LIST = [
    ConceptFromMask,
    ConceptFolder,
    TextLocTrain,
    ApplyAdapter,
    AttentionPreview,
    TinyWorldLoader,
    TinyWorldConceptSet,
    TinyWorldReferences,
    ScoreImages,
]
