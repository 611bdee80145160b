"""The parts of the ComfyUI launcher that need no running ComfyUI: layout, log reading,
output-file mapping, and refusing bad workflows before any HTTP."""

import json

import pytest

from textloc_harness.comfy_launcher import (
    PACK_ROOT,
    ComfyClient,
    ComfyLayout,
    ComfyServer,
    is_api_workflow,
    missing_comfyui_reason,
    output_files,
)

# Shape of ComfyUI 0.3.64's start-up log when a pack fails to import (trimmed from a real run).
FAILED_LOG = """\
Traceback (most recent call last):
  File "/root/ComfyUI/comfy_extras/nodes_audio.py", line 4, in <module>
    import torchaudio
ModuleNotFoundError: No module named 'torchaudio'

Cannot import /root/ComfyUI/comfy_extras/nodes_audio.py module for custom nodes: No module named 'torchaudio'
Traceback (most recent call last):
  File "/root/ComfyUI/nodes.py", line 2131, in load_custom_node
    module_spec.loader.exec_module(module)
  File "{base}/custom_nodes/textloc/nodes/tinyworld_nodes.py", line 14, in <module>
    from ..textloc_core.tinyworld import world
ImportError: cannot import name 'world'

Cannot import {base}/custom_nodes/textloc module for custom nodes: cannot import name 'world'

Import times for custom nodes:
   0.2 seconds (IMPORT FAILED): {base}/custom_nodes/textloc

IMPORT FAILED: nodes_audio.py
"""


def test_layout_installs_the_pack_by_symlink(tmp_path):
    layout = ComfyLayout.create(tmp_path / "base")
    link = layout.custom_nodes / "textloc"
    assert link.is_symlink() and link.resolve() == PACK_ROOT
    assert (link / "__init__.py").is_file()
    for d in (layout.models, layout.input, layout.output, layout.temp, layout.user):
        assert d.is_dir()
    settings = json.loads((layout.user / "default" / "comfy.settings.json").read_text())
    assert settings["Comfy.TutorialCompleted"] is True
    assert ComfyLayout.create(tmp_path / "base") == layout  # reusing a layout is fine


def test_layout_refuses_a_foreign_pack_folder(tmp_path):
    (tmp_path / "custom_nodes" / "textloc").mkdir(parents=True)
    with pytest.raises(ValueError, match="not a link to"):
        ComfyLayout.create(tmp_path)


def test_pack_import_failure_returns_our_traceback_only(tmp_path):
    layout = ComfyLayout.create(tmp_path)
    server = ComfyServer(tmp_path / "no-comfy", layout)
    layout.log_file.write_text(FAILED_LOG.format(base=layout.base))
    failure = server.pack_import_failure()
    assert failure.startswith("Traceback") and "cannot import name 'world'" in failure
    assert "torchaudio" not in failure  # ComfyUI's own audio-node failure is not ours
    layout.log_file.write_text(
        FAILED_LOG.split('Traceback (most recent call last):\n  File "/root/ComfyUI/nodes.py"')[0]
    )
    assert server.pack_import_failure() is None


def test_pack_import_failure_names_a_failing_comfy_entrypoint(tmp_path):
    """The V3 entry point imports fine but raises while listing nodes: ComfyUI logs one line."""
    layout = ComfyLayout.create(tmp_path)
    server = ComfyServer(tmp_path / "no-comfy", layout)
    line = f"Error while calling comfy_entrypoint in {layout.base}/custom_nodes/textloc: Input ids must be unique"
    layout.log_file.write_text(
        f"{line}\n\nImport times for custom nodes:\n"
        f"   0.2 seconds (IMPORT FAILED): {layout.base}/custom_nodes/textloc\n"
    )
    assert server.pack_import_failure() == line


def test_missing_comfyui_is_explained(tmp_path):
    assert "no ComfyUI at" in missing_comfyui_reason(tmp_path)
    (tmp_path / "main.py").write_text("")
    assert missing_comfyui_reason(tmp_path) is None


def test_output_files_map_history_to_disk(tmp_path):
    layout = ComfyLayout.create(tmp_path)
    history = {
        "outputs": {
            "9": {
                "images": [
                    {"filename": "a_00001_.png", "subfolder": "", "type": "output"},
                    {"filename": "p_00001_.png", "subfolder": "x", "type": "temp"},
                ]
            },
            "4": {"text": ["loss 0.1"]},
        }
    }
    assert output_files(history, layout) == {"9": [layout.output / "a_00001_.png"]}
    both = output_files(history, layout, kinds=("output", "temp"))
    assert both["9"] == [layout.output / "a_00001_.png", layout.temp / "x" / "p_00001_.png"]


def test_queue_prompt_refuses_ui_format_and_empty_before_any_request():
    client = ComfyClient("http://127.0.0.1:9")  # nothing listens: a request would fail differently
    with pytest.raises(ValueError, match="UI-format"):
        client.queue_prompt({"nodes": [], "links": [], "version": 0.4})
    with pytest.raises(ValueError, match="non-empty dict"):
        client.queue_prompt({})


def test_api_workflow_naming_rule(tmp_path):
    assert is_api_workflow(tmp_path / "train_api.json")
    assert not is_api_workflow(tmp_path / "train.json")
