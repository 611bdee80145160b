"""A real ComfyUI boots with the pack installed and runs queued graphs over HTTP.

These also test the harness itself (queue, wait, errors, output files), since every other
integration test leans on it.
"""

import ast
import os
from pathlib import Path

import pytest
from comfy_server import FRONTEND_ONLY_NODE_TYPES, shipped_workflows, ui_workflow_node_types
from PIL import Image

from textloc_harness.comfy_launcher import PACK_NAME, PACK_ROOT, ComfyError, load_workflow


def _declared_node_names() -> set[str]:
    """The node id of every ``NodeText(...)`` / ``io.Schema(...)`` in nodes/*.py (V3 nodes),
    read without importing them (importing needs ComfyUI's modules). A node class left out of
    nodes.NODE_LIST, the list comfy_entrypoint hands ComfyUI, is declared here but not served."""
    names = set()
    for path in sorted((PACK_ROOT / "nodes").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            called = getattr(node.func, "attr", getattr(node.func, "id", None))
            if called == "Schema":
                names.update(
                    k.value.value for k in node.keywords if k.arg == "node_id" and isinstance(k.value, ast.Constant)
                )
            elif called == "NodeText" and node.args and isinstance(node.args[0], ast.Constant):
                names.add(node.args[0].value)
    return names


def test_pack_imports_without_failure(comfy):
    failure = comfy.server.pack_import_failure()
    assert failure is None, "ComfyUI could not import the textloc pack:\n" + failure
    # ComfyUI prints one timing line per custom node folder it loaded
    log = comfy.log_text()
    assert any(f"custom_nodes{os.sep}{PACK_NAME}" in ln and "seconds" in ln for ln in log.splitlines())


def test_object_info_lists_every_pack_node(comfy):
    """/object_info walks ComfyUI's NODE_CLASS_MAPPINGS (which comfy_entrypoint filled) and drops
    (and logs) a class whose schema raises; so 'no such log line' + 'our classes listed' = every
    class usable."""
    info = comfy.object_info()
    assert "KSampler" in info  # the stock nodes are there
    assert "An error occurred while retrieving information" not in comfy.log_text(), comfy.server.log_tail(80)
    ours = comfy.pack_node_classes()
    declared = _declared_node_names()
    assert declared, "nodes/*.py declare no io.Schema(node_id=...)"
    assert ours == declared, (
        f"declared but not served: {sorted(declared - ours)}; served but not declared: {sorted(ours - declared)}"
    )
    for name in ours:
        assert info[name]["input"], f"node {name} declares no inputs"


def test_shipped_api_workflows_use_registered_nodes(comfy):
    info = comfy.object_info()
    for path in shipped_workflows(api=True):
        wf = load_workflow(path)
        unknown = {n["class_type"] for n in wf.values() if n["class_type"] not in info}
        assert not unknown, f"{path.name} uses node types ComfyUI does not know: {sorted(unknown)}"


def test_shipped_ui_workflows_use_registered_nodes(comfy):
    info = comfy.object_info()
    for path in shipped_workflows(api=False):
        types = ui_workflow_node_types(load_workflow(path)) - FRONTEND_ONLY_NODE_TYPES
        unknown = types - set(info)
        assert not unknown, f"{path.name} uses node types ComfyUI does not know: {sorted(unknown)}"


def test_queue_run_and_collect_outputs(comfy):
    wf = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 40, "height": 24, "batch_size": 1, "color": 0xFF0000}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "harness"}},
    }
    result = comfy.run(wf, timeout=120)
    files = result.all_files()
    assert len(files) == 1 and files[0].is_file()
    assert Path(files[0]).is_relative_to(comfy.layout.output)
    with Image.open(files[0]) as im:
        assert im.size == (40, 24)
        assert im.convert("RGB").getpixel((5, 5)) == (255, 0, 0)


def test_validation_errors_name_the_node(comfy):
    wf = {
        "7": {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 8, "batch_size": 1, "color": 0}},
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}},
    }
    with pytest.raises(ComfyError, match=r"node 7 \(EmptyImage\)"):
        comfy.queue(wf)


def test_execution_errors_surface_node_and_exception(comfy):
    wf = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        # ComfyUI refuses to save outside its output folder at run time
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "../../escape"}},
    }
    with pytest.raises(ComfyError, match=r"node 2 \(SaveImage\) raised"):
        comfy.run(wf, timeout=120)


def test_interrupt_on_idle_server_is_harmless(comfy):
    comfy.interrupt()
    assert comfy.client.queue_remaining() == 0
