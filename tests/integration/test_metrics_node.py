"""The shipped tinyworld_evaluate workflow, queued headless in a real ComfyUI: train (2 steps),
generate, score; the score node's markdown report must land in the output folder with finite
CLIP-I, CLIP-T and KID."""

from __future__ import annotations

import math
import re
import uuid

from comfy_server import WORKFLOWS_DIR

from textloc_harness.comfy_launcher import load_workflow


def _of_type(workflow: dict, class_type: str) -> list[dict]:
    return [node for node in workflow.values() if node["class_type"] == class_type]


def test_tinyworld_evaluate_writes_a_report_with_finite_scores(comfy):
    workflow = load_workflow(WORKFLOWS_DIR / "api" / "tinyworld_evaluate_api.json")
    (train,) = _of_type(workflow, "TextLocTrain")
    train["inputs"].update(steps=2, checkpoint_every=1, adapter_name=f"eval_{uuid.uuid4().hex[:6]}")
    (preview,) = _of_type(workflow, "TextLocAttentionPreview")
    preview["inputs"]["steps"] = 2
    (score_id,) = [k for k, v in workflow.items() if v["class_type"] == "TextLocScoreImages"]

    result = comfy.run(workflow, timeout=900)

    reports = [p for p in result.files.get(score_id, []) if p.suffix == ".md"]
    assert len(reports) == 1 and reports[0].is_file(), f"no report file: {result.files.get(score_id)}"
    text = reports[0].read_text()
    assert text == result.history["outputs"][score_id]["text"][0]  # the UI shows what was saved
    values = {name: float(v) for name, v in re.findall(r"\| (CLIP-I|CLIP-T|KID) \| (-?[0-9.]+) \|", text)}
    assert set(values) == {"CLIP-I", "CLIP-T", "KID"}, text  # 5 generations, 8 references: KID is computed
    assert all(math.isfinite(v) for v in values.values())
    assert -1 <= values["CLIP-I"] <= 1 and -1 <= values["CLIP-T"] <= 1
    assert "n/a (no attention maps given)" in text  # IoU needs a target mask, which generations lack
    assert "'a star on grass'" in text  # CLIP-T saw the prompt without its identifier token
