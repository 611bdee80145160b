"""The demo runner (README's main command) collects a graph's pictures and writes summary.md.

The full TinyWorld demo takes minutes, so here the runner drives a small stock graph on the
session's ComfyUI; the command-line checks need no ComfyUI at all.
"""

import json
import time

from PIL import Image

from textloc_harness import demo
from textloc_harness.comfy_launcher import ComfyLayout, ProgressWatcher

STOCK_GRAPH = {
    "1": {
        "class_type": "EmptyImage",
        "_meta": {"title": "Blue square"},
        "inputs": {"width": 32, "height": 32, "batch_size": 2, "color": 0x0000FF},
    },
    "2": {
        "class_type": "SaveImage",
        "_meta": {"title": "Saved scene"},
        "inputs": {"images": ["1", 0], "filename_prefix": "demo_test"},
    },
    "3": {"class_type": "PreviewImage", "_meta": {"title": "Heat map overlay"}, "inputs": {"images": ["1", 0]}},
}


def test_run_on_server_copies_outputs_and_writes_summary(comfy, tmp_path):
    wf_path = tmp_path / "stock_api.json"
    wf_path.write_text(json.dumps(STOCK_GRAPH))
    out = tmp_path / "out"
    summary = demo.run_on_server(comfy.client, comfy.layout, wf_path, out, timeout=120, log=lambda *_: None)
    saved = sorted(out.glob("saved_scene_n2_*.png"))
    previews = sorted(out.glob("heat_map_overlay_n3_*.png"))
    assert len(saved) == 2 and len(previews) == 2  # batch of 2, saved and previewed
    with Image.open(saved[0]) as im:
        assert im.size == (32, 32) and im.convert("RGB").getpixel((0, 0)) == (0, 0, 255)
    text = summary.read_text()
    assert "stock_api.json" in text and "ComfyUI 0." in text
    for p in saved + previews:
        assert f"]({p.name})" in text  # every picture is shown in the summary


def test_progress_watcher_follows_the_running_graph(comfy):
    graph = json.loads(json.dumps(STOCK_GRAPH))
    del graph["2"]
    graph["1"]["inputs"]["color"] = 0x123456  # inputs no other test uses: ComfyUI's cache would skip it
    with ProgressWatcher(comfy.client, graph) as watcher:
        comfy.client.run(graph, timeout=120)
        deadline = time.monotonic() + 10
        while watcher.node is None and time.monotonic() < deadline:
            time.sleep(0.1)
    assert watcher.node in {"1", "3"}
    assert watcher.describe().startswith(f"node {watcher.node} (")


def test_trained_files_are_kept_but_not_checkpoints(tmp_path):
    layout = ComfyLayout.create(tmp_path / "base")
    for rel in (
        "textloc/a.safetensors",
        "loras/textloc/a.safetensors",
        "textloc/checkpoints/a/step-000000001/tensors.safetensors",
        "textloc/prior_cache/p.safetensors",
    ):
        (layout.models / rel).parent.mkdir(parents=True, exist_ok=True)
        (layout.models / rel).write_bytes(b"x")
    out = tmp_path / "out"
    copied = demo.collect_model_files(layout, out)
    assert sorted(p.relative_to(out).as_posix() for p in copied) == [
        "models/loras/textloc/a.safetensors",
        "models/textloc/a.safetensors",
    ]


def test_the_summary_names_the_kept_copies_not_the_temporary_layout(tmp_path):
    layout = ComfyLayout.create(tmp_path / "base")
    adapter = layout.models / "textloc" / "a.safetensors"
    adapter.parent.mkdir(parents=True, exist_ok=True)
    adapter.write_bytes(b"x")
    out = tmp_path / "out"
    history = {"outputs": {"3": {"text": [f"adapter: {adapter}\nsteps: 2"]}}}
    results = demo.collect_results(history, {"3": {"class_type": "TextLocTrain"}}, layout, out)
    demo.collect_model_files(layout, out)
    assert results[0].text == ["text: adapter: models/textloc/a.safetensors\nsteps: 2"]
    assert (out / "models" / "textloc" / "a.safetensors").is_file()  # the named file exists beside summary.md


def test_missing_workflow_fails_clearly(tmp_path, capsys):
    rc = demo.main(["--workflow", str(tmp_path / "nope_api.json"), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "nope_api.json does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_missing_comfyui_fails_clearly(tmp_path, capsys):
    wf = tmp_path / "wf_api.json"
    wf.write_text(json.dumps(STOCK_GRAPH))
    rc = demo.main(["--workflow", str(wf), "--comfyui", str(tmp_path / "no-comfy"), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "no ComfyUI at" in capsys.readouterr().err
