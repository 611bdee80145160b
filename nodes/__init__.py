"""The textloc ComfyUI nodes (V3 node API, ``comfy_api.latest``). Each module is one node family;
this file only collects their classes and registers the ``models/textloc`` folder. Node ids and
display names are in each class's ``define_schema``."""

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
