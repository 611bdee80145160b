"""The TinyWorld methods benchmark: its report plumbing, its scoring plan, and one tiny end-to-end
run on random TinyWorld-architecture weights (numbers meaningless, path real)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("bench_methods")


def test_markdown_keeps_the_hand_written_analysis(bench, tmp_path):
    path = tmp_path / "results.md"
    path.write_text(f"# Results\n\nintro\n\n{bench.BEGIN}\nold table\n{bench.END}\n\n## Analysis\nkept\n")
    bench.write_markdown(path, "new table")
    text = path.read_text()
    assert "old table" not in text and "new table" in text
    assert text.startswith("# Results\n\nintro") and text.endswith("## Analysis\nkept\n")
    fresh = tmp_path / "fresh.md"
    bench.write_markdown(fresh, "table")
    assert bench.BEGIN in fresh.read_text() and "table" in fresh.read_text()


def test_plan_scores_the_right_objects(bench):
    from textloc_core.tinyworld.world import held_out_concept

    concept = held_out_concept("dotstar")
    single = bench.generation_plan(concept, "single")
    assert all("<dotstar> star" in prompt and "<bluecircle>" not in prompt for prompt, _ in single)
    target = {"shape": concept.kind.shape, "colour": concept.kind.colour, "texture": concept.kind.texture}
    for prompt, expected in single:
        assert expected.targets == [target]
        assert {"colour": concept.companion.colour} in expected.unprompted
        for other in expected.others:  # new-scene objects never share the companion's look
            assert other["colour"] != concept.companion.colour and other["shape"] != concept.companion.shape
            assert other["colour"] in prompt and other["shape"] in prompt
    multi = bench.generation_plan(concept, "multi")
    assert all("<dotstar> star" in p and "<bluecircle> circle" in p for p, _ in multi)
    assert all(len(e.targets) == 2 for _, e in multi)
    base = bench.generation_plan(concept, "single", tokens=False)
    assert all("<" not in p for p, _ in base)


def test_single_setting_leaves_the_companion_unnamed(bench):
    concept_set = bench.concept_set_for("dotstar", 0, "single")
    assert [c.name for c in concept_set.concepts] == ["dotstar"]
    assert all(set(item.masks) == {"dotstar"} for item in concept_set.images)
    assert len(bench.concept_set_for("dotstar", 0, "multi").concepts) == 2


@pytest.mark.slow
def test_quick_run_end_to_end(bench, tmp_path):
    out, work = tmp_path / "docs", tmp_path / "work"
    code = bench.main(["--quick", "--random-weights", "--pairs", "dotstar", "--seeds", "0", "--methods", "hard,none",
                       "--workers", "1", "--out", str(out), "--work", str(work)])
    assert code == 0
    rows = json.loads((work / "rows.json").read_text())
    runs = [r for r in rows if r["method"] in ("hard", "none")]
    assert sorted((r["setting"], r["method"]) for r in runs) == [
        ("multi", "hard"), ("multi", "none"), ("single", "hard"), ("single", "none")]
    for r in runs:
        assert 0 <= r["iou"] <= 1 and 0 <= r["attn_other"] <= 1 and 0 <= r["fidelity"] <= 1
    text = (out / "results.md").read_text()
    assert "| single | hard | 1 |" in text and "none (Custom Diffusion)" in text and "Random weights" in text
    assert (out / "results_examples.png").stat().st_size > 0
