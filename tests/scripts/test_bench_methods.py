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
    # told in words: the same scenes and judgements, the concept described where its token was
    words = bench.generation_plan(concept, "single", tokens="words")
    assert [e for _, e in words] == [e for _, e in single]
    for (prompt, _), (with_token, _) in zip(words, single):
        assert prompt == with_token.replace("a <dotstar> star", "an orange dotted star")
    multi_words = bench.generation_plan(concept, "multi", tokens="words")
    assert all(p.startswith("an orange dotted star and a blue circle on ") for p, _ in multi_words)


def test_context_rows_are_chosen_by_name(bench):
    assert bench._context_rows("base,words") == ("base", "words")
    assert bench._context_rows("") == ()
    with pytest.raises(Exception, match="unknown context rows"):
        bench._context_rows("base,oracle")


def test_single_setting_leaves_the_companion_unnamed(bench):
    concept_set = bench.concept_set_for("dotstar", 0, "single")
    assert [c.name for c in concept_set.concepts] == ["dotstar"]
    assert all(set(item.masks) == {"dotstar"} for item in concept_set.images)
    assert len(bench.concept_set_for("dotstar", 0, "multi").concepts) == 2


def test_init_word_reaches_every_token(bench):
    for setting in ("single", "multi"):
        chosen = bench.concept_set_for("dotstar", 0, setting, init_word="sks")
        assert all(c.init_word == "sks" and c.initializer == "sks" for c in chosen.concepts)
    assert all(c.initializer == c.class_word for c in bench.concept_set_for("dotstar", 0, "multi").concepts)


def test_method_specs_set_the_attention_weight(bench):
    p = bench.Protocol(attention_fraction=0.25)
    calibrated = bench.train_config(p, "hard@cal", 0)
    assert calibrated.guidance == "hard" and calibrated.calibrated and calibrated.attention_fraction == 0.25
    fixed = bench.train_config(p, "soft@0.03", 1)
    assert fixed.guidance == "soft" and fixed.attention_weight_mode == "fixed" and fixed.attention_weight == 0.03
    assert not bench.train_config(p, "none", 0).calibrated
    own = bench.train_config(p, "hard@cal=1", 0)
    assert own.calibrated and own.attention_fraction == 1.0
    assert bench.method_label("hard@cal=1") == "hard (calibrated, fraction 1)"
    assert bench.method_label("hard@cal") == "hard (calibrated)"
    assert bench.method_label("soft@0.3") == "soft (λ=0.3)"
    assert bench.method_label("none") == "none (Custom Diffusion)"
    for bad in ("none@cal", "medium", "hard@x", "hard@0.1=2", "none@cal=1"):
        with pytest.raises(ValueError):
            bench.train_config(p, bad, 0)


def test_paired_table_compares_each_method_with_none_on_the_same_runs(bench):
    def row(method, seed, iou, clip_i):
        return {
            "setting": "single",
            "pair": "dotstar",
            "seed": seed,
            "method": method,
            "iou": iou,
            "clip_i": clip_i,
            "clip_i_pair": clip_i,
            "fidelity_cs": 0.5,
            "leakage": 0.5,
        }

    rows = [row("none", s, 0.05, 0.2) for s in range(3)]
    rows += [row("hard@cal", 0, 0.30, 0.25), row("hard@cal", 1, 0.10, 0.15), row("hard@cal", 2, 0.20, 0.21)]
    text = bench.paired_table(rows, ("none", "hard@cal"))
    line = next(x for x in text.splitlines() if "hard (calibrated)" in x)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2] == "3" and cells[-1] == "2/3"  # IoU gains 0.25, 0.05, 0.15
    assert cells[3].startswith("+0.150 [") and "3/0" in cells[3]
    assert cells[4].startswith("+0.003 [") and "2/1" in cells[4]
    assert "none (Custom Diffusion) |" not in text


@pytest.mark.slow
def test_quick_run_end_to_end(bench, tmp_path):
    out, work = tmp_path / "docs", tmp_path / "work"
    quick = "--quick --random-weights --pairs dotstar --seeds 0 --methods hard,none --workers 1".split()
    code = bench.main([*quick, "--out", str(out), "--work", str(work)])
    assert code == 0
    rows = json.loads((work / "rows.json").read_text())
    runs = [r for r in rows if r["method"] in ("hard", "none")]
    both = [("multi", "hard"), ("multi", "none"), ("single", "hard"), ("single", "none")]
    assert sorted((r["setting"], r["method"]) for r in runs) == both
    for r in runs:
        assert 0 <= r["iou"] <= 1 and 0 <= r["attn_other"] <= 1 and 0 <= r["fidelity"] <= 1
    text = (out / "results.md").read_text()
    assert "| single | hard | 1 |" in text and "none (Custom Diffusion)" in text and "Random weights" in text
    assert (out / "results_examples.png").stat().st_size > 0


def test_lever_flags_reach_the_config_and_name_the_recipe(bench):
    from benchmarks import records

    p = bench.Protocol(
        unmasked_weight=0.0,
        token_warmup_steps=30,
        token_warmup_lr=1e-2,
        train_keys=False,
        union_sampling=True,
        prior_images=50,
        class_prompt="a {class_word} on grass",
    )
    config = bench.train_config(p, "hard@cal", 3)
    assert (config.unmasked_weight, config.token_warmup_steps, config.token_warmup_learning_rate) == (0.0, 30, 1e-2)
    assert not config.train_keys and config.union_sampling and config.class_prompt == "a {class_word} on grass"
    assert config.prior_images == 50 and config.seed == 3
    assert records.recipe_name(p) == "masked 0, warm-up 30 @ 0.01, V only, union, prior 50 'a {class_word} on grass'"
    assert records.recipe_name(bench.Protocol()) == "plain"
