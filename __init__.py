"""ComfyUI entry point of the textloc node pack: registers the nodes, nothing else.

ComfyUI imports this file as the package ``custom_nodes.textloc``; the nodes themselves
live in nodes/ (thin ComfyUI wrappers) and the work in textloc_core/ (plain torch).
"""
import importlib.util as _util

# pytest collects the repository root as a package and imports this file outside ComfyUI,
# where nodes/ cannot import (no folder_paths, no comfy): register nothing there. Inside
# ComfyUI folder_paths is always importable, so a broken node still fails loudly.
if _util.find_spec("folder_paths") is not None:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:
    NODE_CLASS_MAPPINGS: dict = {}
    NODE_DISPLAY_NAME_MAPPINGS: dict = {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
