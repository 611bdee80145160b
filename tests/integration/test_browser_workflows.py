"""The real ComfyUI page (headless Chromium via Playwright) loads every shipped UI workflow
with all its node types registered and no missing-node dialog; screenshots are kept.

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

from comfy_server import shipped_workflows
from textloc_core.comfy_launcher import PACK_ROOT

pytestmark = [pytest.mark.browser, pytest.mark.slow]

BROWSER_DIR = PACK_ROOT / "tests" / "browser"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")

# A stock node beside a node type nobody registers: the check must flag exactly the latter.
PROBE_WORKFLOW = {
    "last_node_id": 2, "last_link_id": 0, "links": [], "groups": [], "config": {}, "extra": {},
    "version": 0.4,
    "nodes": [
        {"id": 1, "type": "EmptyImage", "pos": [80, 80], "size": [300, 150], "flags": {}, "order": 0,
         "mode": 0, "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": None}],
         "properties": {}, "widgets_values": [64, 64, 1, 0]},
        {"id": 2, "type": "TextlocNoSuchNodeProbe", "pos": [450, 80], "size": [200, 80], "flags": {},
         "order": 1, "mode": 0, "inputs": [], "outputs": [], "properties": {}, "widgets_values": []},
    ],
}


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
    probe = work / "textloc_probe.json"
    probe.write_text(json.dumps(PROBE_WORKFLOW))
    shots = PACK_ROOT / "artifacts" / "browser"
    shots.mkdir(parents=True, exist_ok=True)
    workflows = [probe, *shipped_workflows(api=False)]
    proc = subprocess.run(
        ["node", str(BROWSER_DIR / "check_workflows.mjs"), comfy.client.base_url + "/", str(shots),
         *map(str, workflows)],
        cwd=BROWSER_DIR, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, CHROMIUM_PATH=CHROMIUM))
    assert proc.returncode == 0, f"browser check crashed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    by_name = {Path(r["workflow"]).name: r for r in report["results"]}
    if os.environ.get("TEXTLOC_SAVE_SCREENSHOTS"):
        docs = PACK_ROOT / "docs" / "screenshots"
        docs.mkdir(parents=True, exist_ok=True)
        for name, r in by_name.items():
            if name != probe.name:
                shutil.copy2(r["screenshot"], docs / Path(r["screenshot"]).name)
    return by_name, report["page_errors"]


def test_browser_check_flags_a_missing_node(browser_report):
    results, _ = browser_report
    probe = results["textloc_probe.json"]
    assert probe["unknownTypes"] == ["TextlocNoSuchNodeProbe"]
    assert any("TextlocNoSuchNodeProbe" in d for d in probe["dialogs"]), probe["dialogs"]
    assert Path(probe["screenshot"]).is_file()


def test_shipped_ui_workflows_load_in_browser(browser_report):
    results, page_errors = browser_report
    shipped = [p.name for p in shipped_workflows(api=False)]
    if not shipped:
        pytest.skip("no UI-format workflow in workflows/ yet")
    for name in shipped:
        r = results[name]
        assert r["nodeCount"] > 0, f"{name}: the page loaded an empty graph"
        assert not r["unknownTypes"], f"{name}: node types unknown to the page: {r['unknownTypes']}"
        assert not r["nodesWithErrors"], f"{name}: nodes flagged with errors: {r['nodesWithErrors']}"
        assert not r["dialogs"], f"{name}: a dialog opened on load: {r['dialogs']} (page errors: {page_errors})"
        assert Path(r["screenshot"]).stat().st_size > 10_000
