"""ComfyUI's template browser offers the shipped workflows, and reads the pack's pyproject.toml.

The pack keeps its drag-in graphs in ``workflows/`` (the design's name). ComfyUI lists a
custom node's ``example_workflows``, ``example``, ``examples``, ``workflow`` or ``workflows``
folder (``app/custom_node_manager.py``) under ``GET /workflow_templates`` and serves each file at
``/api/workflow_templates/<pack>/<name>.json``; for every name but ``example_workflows`` it logs
"consider renaming it to 'example_workflows'" at DEBUG level. These tests check, on the ComfyUI
under test, that the listing and the files are what the pack ships, and that at the default log
level nothing about the folder is printed at all, and at DEBUG level only that hint.
"""

import json

import pytest
from comfy_server import WORKFLOWS_DIR, shipped_workflows

from textloc_harness.comfy_launcher import PACK_NAME, ComfyLayout, ComfyServer


def test_the_template_browser_lists_every_shipped_ui_workflow(comfy):
    listed = comfy.client.get_json("/workflow_templates")
    shipped = sorted(path.stem for path in shipped_workflows(api=False))
    assert shipped, f"no UI-format workflows in {WORKFLOWS_DIR}"
    assert sorted(listed.get(PACK_NAME, [])) == shipped, (
        f"/workflow_templates lists {listed.get(PACK_NAME)} for {PACK_NAME}, the pack ships {shipped}"
    )
    # the API-format twins live in workflows/api/, which the browser does not list
    assert not [name for name in listed[PACK_NAME] if name.endswith("_api")]


def test_the_template_files_served_are_the_shipped_files(comfy):
    for path in shipped_workflows(api=False):
        served = comfy.client.get_json(f"/api/workflow_templates/{PACK_NAME}/{path.name}")
        assert served == json.loads(path.read_text()), f"{path.name} is served changed"


def test_the_workflows_folder_costs_no_log_line_at_the_default_level(comfy):
    log = comfy.log_text()
    assert "example_workflows" not in log
    mentions = [
        line for line in log.splitlines() if "example workflow folder" in line.lower() or "workflow_templates" in line
    ]
    assert not mentions, "ComfyUI logged about the pack's workflows:\n" + "\n".join(mentions)


@pytest.mark.slow
def test_at_debug_level_the_rename_hint_is_the_only_line_about_the_folder(comfy_tree, tmp_path):
    server = ComfyServer(comfy_tree, ComfyLayout.create(tmp_path), extra_args=["--verbose", "DEBUG"])
    server.start()
    try:
        listed = server.client.get_json("/workflow_templates")
    finally:
        server.stop()
    assert sorted(listed[PACK_NAME]) == sorted(path.stem for path in shipped_workflows(api=False))
    about_folder = [line for line in server.log_text().splitlines() if "'workflows'" in line]
    assert len(about_folder) == 1 and about_folder[0].endswith(
        f"Found example workflow folder 'workflows' for custom node '{PACK_NAME}', "
        "consider renaming it to 'example_workflows'"
    ), about_folder


def test_comfyui_reads_the_packs_pyproject(comfy):
    """ComfyUI parses every custom node's pyproject.toml at start-up (comfy_config) and only logs
    a warning when that fails; the Registry fields must not break it."""
    assert "Unable to parse pyproject.toml" not in comfy.log_text()
