"""The paper-protocol harness end to end on the paper's real photos, with a TinyWorld-sized
random model and CLIP saved to local folders (numbers meaningless, pipeline real)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.tiny_models import build_random_tinyworld_pipeline
from textloc_core.data import readers

REPO = Path(__file__).resolve().parents[2]
DATASET = readers.find_paper_dataset(REPO)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(DATASET is None, reason="the paper dataset (../shared/paper-dataset) is not on this machine"),
]


@pytest.fixture(scope="module")
def local_models(tmp_path_factory):
    """A TinyWorld-architecture StableDiffusionPipeline folder and a CLIP folder (random weights)."""
    from textloc_core.tinyworld import model_configs as mc

    root = tmp_path_factory.mktemp("models")
    pipe = build_random_tinyworld_pipeline()
    pipe.save_pretrained(root / "sd")
    pipe.text_encoder.save_pretrained(root / "clip" / "text")
    mc.build_vision_encoder().save_pretrained(root / "clip" / "vision")
    pipe.tokenizer.save_pretrained(root / "clip" / "tokenizer")
    return root


def test_paper_protocol_end_to_end(local_models, tmp_path, capsys, load_script):
    script = load_script("paper_protocol")
    out = tmp_path / "out"
    paths = ["--model", str(local_models / "sd"), "--clip", str(local_models / "clip"), "--dataset", str(DATASET)]
    tiny = "--resolution 64 --steps-single 2 --steps-multi 2 --prior-images 2 --prior-steps 2 --images-per-prompt 3"
    run = f"--pairs bucket+doll --single first --methods hard,none --device cpu {tiny} --n-prompts 2 --sample-steps 2"
    code = script.main([*paths, "--out", str(out), *run.split()])
    assert code == 0
    rows = json.loads((out / "rows.json").read_text())
    # bucket alone (single) and bucket+doll (multi), each with hard and none
    both = [("multi", "hard"), ("multi", "none"), ("single", "hard"), ("single", "none")]
    assert sorted((r["setting"], r["method"]) for r in rows) == both
    for row in rows:
        assert row["n_images"] == 6 and row["steps"] == 2
        assert -1 <= row["clip_i"] <= 1 and -1 <= row["clip_t"] <= 1
        assert 0 <= row["iou"] <= 1
        assert row["kid"] == row["kid"]  # 6 generated and 5 references: KID is defined (not nan)
    table = (out / "results.md").read_text()
    assert "| hard guidance |" in table and "| Custom Diffusion (none) |" in table
    assert "%" in table.split("| hard guidance |")[1]  # change against Custom Diffusion is reported
    assert "single CLIP-I" in capsys.readouterr().out
