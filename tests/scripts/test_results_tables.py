"""docs/results.md's tables are the committed run records' (benchmarks/records/), regenerated
and compared; and the table writer computes what it says on records made up here."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def tables(load_script):
    return load_script("results_tables")


def test_committed_tables_are_the_records(tables):
    from benchmarks import records

    page = tables.PAGE.read_text(encoding="utf-8")
    assert tables.render(page, records.load()) == page, (
        "run python scripts/results_tables.py and commit docs/results.md"
    )


def _rec(phase, method, seed, pair="dotstar", setting="single", recipe="plain", **metrics):
    from benchmarks.records import METRICS

    base = {k: 0.5 for k in METRICS}
    base.update(metrics)
    return {
        "phase": phase,
        "recipe": recipe,
        "setting": setting,
        "pair": pair,
        "seed": seed,
        "method": method,
        "metrics": base,
        "total_s": 10.0,
        "code": "abc",
        "date": f"2026-01-0{seed + 1}T00:00:00Z",
    }


def test_heldout_block_pairs_and_checks_the_targets(tables):
    recs = []
    for seed in range(5):
        recs.append(_rec("heldout", "none", seed, iou=0.1, fidelity_cs=0.5, leakage=0.6, alignment=0.6))
        # IoU gain 0.2 in four runs, 0.05 in one: 4/5 = 0.8 meets the share
        recs.append(
            _rec(
                "heldout",
                "hard@cal",
                seed,
                recipe="masked 0",
                iou=0.3 if seed else 0.15,
                fidelity_cs=0.7,
                leakage=0.4,
                alignment=0.5,
            )
        )
    text = tables.block(recs, "heldout")
    assert "| single | masked 0 | hard@cal | 5 | 0.700 ± 0.000 | 0.400 ± 0.000 |" in text
    line = next(x for x in text.splitlines() if x.startswith("| single | masked 0 | hard@cal | plain | 5 | +"))
    assert line.split("|")[6].strip().startswith("+0.170 [") and line.rstrip(" |").endswith("4/5")
    assert "| hard: target colour+shape | 0.700 | ≥ 0.6 | met |" in text
    assert "| hard: leakage | 0.400 | ≤ 0.3 | missed (by 0.100) |" in text
    assert "| hard: prompt alignment | 0.500 | ≥ 0.7 | missed (by 0.200) |" in text
    assert "4/5 = 0.80 | ≥ 0.8 | met |" in text
    assert "| none: target colour+shape | 0.500 | ≥ 0.4 | met |" in text
    assert tables.block(recs, "dev") == "(no records yet)"


def test_a_round_with_the_previous_default_checks_the_chosen_recipe_and_compares_the_two(tables):
    chosen, previous = tables.CHOSEN_HARD["heldout2"]
    assert previous == "plain"
    recs = []
    for seed in range(4):
        recs.append(_rec("heldout2", "none", seed, recipe="masked 0, preserve 100", iou=0.1))
        recs.append(_rec("heldout2", "hard@cal", seed, recipe=chosen, iou=0.4, fidelity_cs=0.7, leakage=0.2))
        recs.append(_rec("heldout2", "hard@cal", seed, recipe="plain", iou=0.2, fidelity_cs=0.3, leakage=0.6))
    text = tables.block(recs, "heldout2")
    assert "| hard: target colour+shape | 0.700 | ≥ 0.6 | met |" in text  # the chosen recipe only
    assert "| hard: leakage | 0.200 | ≤ 0.3 | met |" in text
    row = next(x for x in text.splitlines() if x.startswith(f"| {chosen} | plain | 4 |"))
    iou, colour_shape, leakage = (c.strip() for c in row.split("|")[4:7])
    assert iou.startswith("+0.200 [") and colour_shape.startswith("+0.400 [") and leakage.startswith("-0.400 [")
    assert colour_shape.endswith("4/0") and leakage.endswith("0/4")


def test_dev_rows_pair_with_none_at_their_own_recipe(tables):
    recs = [
        _rec("dev", "none", s, recipe=r, iou=base) for s in range(3) for r, base in (("plain", 0.1), ("masked 0", 0.0))
    ]
    recs += [_rec("dev", "hard@cal", s, recipe="masked 0", iou=0.3) for s in range(3)]
    recs += [_rec("dev", "hard@cal", s, recipe="V only", iou=0.3) for s in range(3)]
    pairs = {(recipe, base_recipe) for _, recipe, _, _, base_recipe, _ in tables.paired_rows(recs)}
    assert pairs == {("masked 0", "masked 0"), ("V only", "plain")}
    text = tables.paired_table(recs)
    assert "| single | masked 0 | hard@cal | masked 0 | 3 | +0.300 [" in text
    assert "| single | V only | hard@cal | plain | 3 | +0.200 [" in text


def test_records_keep_the_last_of_a_rerun_and_read_the_old_metric_name(tmp_path):
    from benchmarks import records

    old = _rec("dev", "none", 1, clip_i_pair=0.25)
    old["metrics"]["clip_i_paper"] = old["metrics"].pop("clip_i_pair")  # recorded under the former name
    (tmp_path / "a.jsonl").write_text(json.dumps(_rec("dev", "none", 0, iou=0.1)) + "\n" + json.dumps(old) + "\n")
    (tmp_path / "b.jsonl").write_text(json.dumps(_rec("dev", "none", 0, iou=0.2)) + "\n")
    loaded = sorted(records.load(tmp_path), key=lambda r: r["seed"])
    assert [r["metrics"]["iou"] for r in loaded] == [0.2, 0.5]  # seed 0 rerun: the later record counts
    assert loaded[1]["metrics"]["clip_i_pair"] == 0.25 and "clip_i_paper" not in loaded[1]["metrics"]


def test_missing_markers_are_named(tables):
    with pytest.raises(ValueError, match="records:dev:begin"):
        tables.render("# page without markers\n", [])
