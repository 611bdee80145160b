"""ComfyUI entry point of the textloc node pack: registers the nodes, nothing else.

ComfyUI imports this file as the package ``custom_nodes.textloc``; the nodes themselves
live in nodes/ (thin ComfyUI wrappers) and the work in textloc_core/ (plain torch).
"""
import os as _os

# nodes/ is written alongside this file; until its package exists the pack registers no
# node rather than failing ComfyUI's import (an ImportError inside nodes/ still surfaces).
if _os.path.isfile(_os.path.join(_os.path.dirname(__file__), "nodes", "__init__.py")):
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:
    NODE_CLASS_MAPPINGS: dict = {}
    NODE_DISPLAY_NAME_MAPPINGS: dict = {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
