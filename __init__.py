"""ComfyUI entry point of the textloc node pack: registers the nodes, nothing else.

ComfyUI imports this file as the package ``custom_nodes.textloc`` and, finding no
NODE_CLASS_MAPPINGS, calls ``comfy_entrypoint`` (the V3 node API; ComfyUI 0.3.64 and 0.33.0
take a module's V1 mappings first and then never call it, so the pack exports only this).
The nodes themselves live in nodes/ (thin ComfyUI wrappers) and the work in textloc_core/
(plain torch).
"""

import importlib.util as _util

# pytest collects the repository root as a package and imports this file outside ComfyUI,
# where nodes/ cannot import (no folder_paths, no comfy): register nothing there. Inside
# ComfyUI folder_paths is always importable, so a broken node still fails loudly.
if _util.find_spec("folder_paths") is not None:
    from comfy_api.latest import ComfyExtension, io

    from .nodes import NODE_LIST

    class TextLocExtension(ComfyExtension):
        async def get_node_list(self) -> list[type[io.ComfyNode]]:
            return list(NODE_LIST)

    async def comfy_entrypoint() -> ComfyExtension:
        return TextLocExtension()

    __all__ = ["comfy_entrypoint"]
else:
    __all__ = []
