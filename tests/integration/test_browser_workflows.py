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
from comfy_server import USER_CHECKPOINTS, shipped_workflows

from textloc_harness.comfy_launcher import PACK_ROOT

pytestmark = [pytest.mark.browser, pytest.mark.slow]

BROWSER_DIR = PACK_ROOT / "tests" / "browser"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")


def _ui_node(node_id: int, node_type: str, x: int, size: list, inputs: list, outputs: list, widgets: list) -> dict:
    """One node of a UI-format workflow, in a row at (``x``, 80), run in id order."""
    return {
        "id": node_id,
        "type": node_type,
        "pos": [x, 80],
        "size": size,
        "flags": {},
        "order": node_id - 1,
        "mode": 0,
        "inputs": inputs,
        "outputs": outputs,
        "properties": {},
        "widgets_values": widgets,
    }


def _ui_workflow(nodes: list[dict], links: list[list]) -> dict:
    """A UI-format workflow (LiteGraph 0.4) of ``nodes`` joined by ``links``."""
    return {
        "last_node_id": len(nodes),
        "last_link_id": len(links),
        "links": links,
        "groups": [],
        "config": {},
        "extra": {},
        "version": 0.4,
        "nodes": nodes,
    }


def _slots(*names: str, links=None) -> list[dict]:
    """Output slots of the types ``names``, none linked unless ``links`` is given (for the first)."""
    return [{"name": name, "type": name, "links": links if i == 0 else None} for i, name in enumerate(names)]


PROBE_NODE_TYPE = "TextlocNoSuchNodeProbe"
# A stock node beside a node type nobody registers: the check must flag exactly the latter.
MISSING_NODE_PROBE = _ui_workflow(
    [
        _ui_node(1, "EmptyImage", 80, [300, 150], [], _slots("IMAGE"), [64, 64, 1, 0]),
        _ui_node(2, PROBE_NODE_TYPE, 450, [200, 80], [], [], []),
    ],
    links=[],
)

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
MISSING_MODEL_PROBE = _ui_workflow(
    [
        _ui_node(
            1,
            "CheckpointLoaderSimple",
            80,
            [320, 100],
            [],
            _slots("MODEL", "CLIP", "VAE", links=[1]),
            [PROBE_CHECKPOINT],
        ),
        _ui_node(
            2,
            "LoraLoaderModelOnly",
            450,
            [320, 100],
            [{"name": "model", "type": "MODEL", "link": 1}],
            _slots("MODEL"),
            [PROBE_MODEL_FILES[1], 1.0],
        ),
        _ui_node(
            3,
            "TextLocApplyAdapter",
            820,
            [320, 130],
            [{"name": "model", "type": "MODEL", "link": None}, {"name": "clip", "type": "CLIP", "link": None}],
            _slots("MODEL", "CLIP"),
            [PROBE_MODEL_FILES[2], 1.0, False],
        ),
    ],
    links=[[1, 1, 0, 2, 0, "MODEL"]],
)
# nothing listens on port 9: a frontend that looks the file up fails at once, offline
MISSING_MODEL_PROBE["models"] = [
    {"name": PROBE_CHECKPOINT, "url": f"http://127.0.0.1:9/{PROBE_CHECKPOINT}", "directory": "checkpoints"}
]
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
    for checkpoint in USER_CHECKPOINTS:  # the user's own base model, by name (comfy_server.USER_CHECKPOINTS)
        (comfy.layout.models / "checkpoints").mkdir(parents=True, exist_ok=True)
        (comfy.layout.models / "checkpoints" / checkpoint).touch()
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
