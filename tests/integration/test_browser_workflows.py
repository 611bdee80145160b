"""The real ComfyUI page (headless Chromium via Playwright) loads every shipped UI workflow
with all its node types registered, every model file it names installed, valid widget values
and nothing flagged by the frontend; two probe workflows prove the check catches a missing
node and missing models in each frontend. Screenshots are kept.

Needs node, tests/browser/node_modules (``npm ci`` there) and Chromium (Debian package
``chromium``); without them the check skips and the session ends with
"BROWSER CHECK DID NOT RUN: ...". Screenshots go to artifacts/browser/ (gitignored), and
also to docs/screenshots/ when TEXTLOC_SAVE_SCREENSHOTS=1.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from comfy_server import USER_MODELS, shipped_workflows

from textloc_harness.comfy_launcher import PACK_ROOT

pytestmark = [pytest.mark.browser, pytest.mark.slow]

BROWSER_DIR = PACK_ROOT / "tests" / "browser"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")

PROBE_NODE_TYPE = "TextlocNoSuchNodeProbe"
# A stock node beside a node type nobody registers: the check must flag exactly the latter.
MISSING_NODE_PROBE = {
    "last_node_id": 2,
    "last_link_id": 0,
    "links": [],
    "groups": [],
    "config": {},
    "extra": {},
    "version": 0.4,
    "nodes": [
        {
            "id": 1,
            "type": "EmptyImage",
            "pos": [80, 80],
            "size": [300, 150],
            "flags": {},
            "order": 0,
            "mode": 0,
            "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": None}],
            "properties": {},
            "widgets_values": [64, 64, 1, 0],
        },
        {
            "id": 2,
            "type": PROBE_NODE_TYPE,
            "pos": [450, 80],
            "size": [200, 80],
            "flags": {},
            "order": 1,
            "mode": 0,
            "inputs": [],
            "outputs": [],
            "properties": {},
            "widgets_values": [],
        },
    ],
}

# Registered nodes naming model files nobody installed: a stock checkpoint and LoRA loader and
# the pack's own Apply node (the case of a shipped workflow naming an adapter a fresh install
# lacks). The checkpoint is also listed in the workflow's "models", the one way frontend 1.27
# itself reports a missing model (a dialog); 1.49 reports all three on its own.
PROBE_CHECKPOINT = "textloc_missing_model_probe.safetensors"
PROBE_MODEL_FILES = (
    PROBE_CHECKPOINT,
    "textloc/textloc_missing_lora_probe.safetensors",
    "textloc_missing_adapter_probe.safetensors",
)
MISSING_MODEL_PROBE = {
    "last_node_id": 3,
    "last_link_id": 1,
    "links": [[1, 1, 0, 2, 0, "MODEL"]],
    "groups": [],
    "config": {},
    "extra": {},
    "version": 0.4,
    "nodes": [
        {
            "id": 1,
            "type": "CheckpointLoaderSimple",
            "pos": [80, 80],
            "size": [320, 100],
            "flags": {},
            "order": 0,
            "mode": 0,
            "inputs": [],
            "outputs": [
                {"name": "MODEL", "type": "MODEL", "links": [1]},
                {"name": "CLIP", "type": "CLIP", "links": None},
                {"name": "VAE", "type": "VAE", "links": None},
            ],
            "properties": {},
            "widgets_values": [PROBE_MODEL_FILES[0]],
        },
        {
            "id": 2,
            "type": "LoraLoaderModelOnly",
            "pos": [450, 80],
            "size": [320, 100],
            "flags": {},
            "order": 1,
            "mode": 0,
            "inputs": [{"name": "model", "type": "MODEL", "link": 1}],
            "outputs": [{"name": "MODEL", "type": "MODEL", "links": None}],
            "properties": {},
            "widgets_values": [PROBE_MODEL_FILES[1], 1.0],
        },
        {
            "id": 3,
            "type": "TextLocApplyAdapter",
            "pos": [820, 80],
            "size": [320, 130],
            "flags": {},
            "order": 2,
            "mode": 0,
            "inputs": [
                {"name": "model", "type": "MODEL", "link": None},
                {"name": "clip", "type": "CLIP", "link": None},
            ],
            "outputs": [
                {"name": "MODEL", "type": "MODEL", "links": None},
                {"name": "CLIP", "type": "CLIP", "links": None},
            ],
            "properties": {},
            "widgets_values": [PROBE_MODEL_FILES[2], 1.0, False],
        },
    ],
    # nothing listens on port 9: a frontend that looks the file up fails at once, offline
    "models": [{"name": PROBE_CHECKPOINT, "url": f"http://127.0.0.1:9/{PROBE_CHECKPOINT}", "directory": "checkpoints"}],
}
PROBES = {
    "textloc_probe_missing_node.json": MISSING_NODE_PROBE,
    "textloc_probe_missing_model.json": MISSING_MODEL_PROBE,
}


def problems(result: dict) -> dict[str, list]:
    """Everything check_workflows.mjs found wrong with one loaded workflow (empty: it is clean)."""
    found = {
        key: result[key]
        for key in ("graphMismatch", "unknownTypes", "missingModels", "widgetErrors", "nodesWithErrors", "dialogs")
    }
    frontend = result["frontend"]
    found.update(
        {f"frontend {key}": frontend[key] for key in ("missingNodeTypes", "missingModels", "toasts", "errorOverlay")}
    )
    return {key: value for key, value in found.items() if value}


def _missing_tools() -> str | None:
    if not shutil.which("node"):
        return "node is not installed (Debian package nodejs)"
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)"
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        return f"playwright-core is not installed: run `npm ci` in {BROWSER_DIR}"
    return None


@pytest.fixture(scope="session")
def browser_report(comfy, not_run, tmp_path_factory):
    """Run check_workflows.mjs once over the probe and every shipped UI workflow."""
    reason = _missing_tools()
    if reason:
        not_run("BROWSER CHECK", reason, required_env="TEXTLOC_REQUIRE_BROWSER")
    work = tmp_path_factory.mktemp("browser")
    probes = []
    for name, workflow in PROBES.items():
        probes.append(work / name)
        probes[-1].write_text(json.dumps(workflow))
    for (folder, _), files in USER_MODELS.items():  # the user's own base models, by name (comfy_server.USER_MODELS)
        (comfy.layout.models / folder).mkdir(parents=True, exist_ok=True)
        for name in files:
            (comfy.layout.models / folder / name).touch()
    shots = PACK_ROOT / "artifacts" / "browser"
    shots.mkdir(parents=True, exist_ok=True)
    workflows = [*probes, *shipped_workflows(api=False)]
    proc = subprocess.run(
        [
            "node",
            str(BROWSER_DIR / "check_workflows.mjs"),
            comfy.client.base_url + "/",
            str(shots),
            *map(str, workflows),
        ],
        cwd=BROWSER_DIR,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, CHROMIUM_PATH=CHROMIUM),
    )
    assert proc.returncode == 0, f"browser check crashed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    by_name = {Path(r["workflow"]).name: r for r in report["results"]}
    if os.environ.get("TEXTLOC_SAVE_SCREENSHOTS"):
        docs = PACK_ROOT / "docs" / "screenshots"
        docs.mkdir(parents=True, exist_ok=True)
        for name, r in by_name.items():
            if name not in PROBES:
                shutil.copy2(r["screenshot"], docs / Path(r["screenshot"]).name)
    return by_name, report["page_errors"]


def test_browser_check_flags_a_missing_node(browser_report):
    results, _ = browser_report
    probe = results["textloc_probe_missing_node.json"]
    assert not probe["graphMismatch"], probe["graphMismatch"]  # the page holds the probe, nothing else
    assert probe["unknownTypes"] == [PROBE_NODE_TYPE]  # against the server's /object_info
    # and the frontend itself said so (1.27: its dialog; 1.49: its missing-nodes store)
    assert probe["frontend"]["missingNodeTypes"] == [PROBE_NODE_TYPE], probe["frontend"]
    assert f"2:{PROBE_NODE_TYPE}" in probe["nodesWithErrors"]
    assert Path(probe["screenshot"]).is_file()


def test_browser_check_flags_missing_models(browser_report):
    results, _ = browser_report
    probe = results["textloc_probe_missing_model.json"]
    assert not probe["graphMismatch"], probe["graphMismatch"]  # not the frontend's default graph
    assert not probe["unknownTypes"]
    assert set(PROBE_MODEL_FILES) <= set(probe["missingModels"]), probe["missingModels"]
    assert len(probe["widgetErrors"]) == len(PROBE_MODEL_FILES), probe["widgetErrors"]
    # the frontend's own report (1.27: its missing-models dialog; 1.49: its missing-model store)
    assert PROBE_CHECKPOINT in probe["frontend"]["missingModels"], probe["frontend"]


def test_shipped_ui_workflows_load_in_browser(browser_report):
    results, page_errors = browser_report
    shipped = [p.name for p in shipped_workflows(api=False)]
    if not shipped:
        pytest.skip("no UI-format workflow in workflows/ yet")
    for name in shipped:
        r = results[name]
        assert r["nodeCount"] > 0, f"{name}: the page loaded an empty graph"
        assert not problems(r), f"{name}: {problems(r)} (page errors: {page_errors})"
        assert Path(r["screenshot"]).stat().st_size > 10_000
