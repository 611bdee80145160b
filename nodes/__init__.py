"""The textloc ComfyUI nodes (V1 node API). Each module is one node family; this file only
collects their classes and registers the ``models/textloc`` folder."""

from . import paths
from .apply_node import ApplyAdapter
from .concept_nodes import ConceptFolder, ConceptFromMask
from .metrics_node import ScoreImages
from .preview_node import AttentionPreview
from .tinyworld_nodes import TinyWorldConceptSet, TinyWorldLoader
from .tinyworld_reference_node import TinyWorldReferences
from .train_node import TextLocTrain

paths.register()

NODE_CLASS_MAPPINGS = {
    "TextLocConceptFromMask": ConceptFromMask,
    "TextLocConceptFolder": ConceptFolder,
    "TextLocTrain": TextLocTrain,
    "TextLocApplyAdapter": ApplyAdapter,
    "TextLocAttentionPreview": AttentionPreview,
    "TextLocTinyWorldLoader": TinyWorldLoader,
    "TextLocTinyWorldConceptSet": TinyWorldConceptSet,
    "TextLocTinyWorldReferences": TinyWorldReferences,
    "TextLocScoreImages": ScoreImages,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "TextLocConceptFromMask": "TextLoc Concept From Mask",
    "TextLocConceptFolder": "TextLoc Concept Folder",
    "TextLocTrain": "TextLoc Train",
    "TextLocApplyAdapter": "TextLoc Apply Adapter",
    "TextLocAttentionPreview": "TextLoc Attention Preview",
    "TextLocTinyWorldLoader": "TextLoc TinyWorld Loader",
    "TextLocTinyWorldConceptSet": "TextLoc TinyWorld Concept Set",
    "TextLocTinyWorldReferences": "TextLoc TinyWorld References",
    "TextLocScoreImages": "TextLoc Score Images",
}
