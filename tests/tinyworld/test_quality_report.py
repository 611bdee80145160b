"""The base-model quality report (scripts/bench_tinyworld_quality.py): its intervals and its doc block."""

from __future__ import annotations

import pytest


def test_wilson_interval_matches_hand_computed_values(load_script):
    bench = load_script("bench_tinyworld_quality")
    # p = 0.5, n = 200, z = 1.96: centre 0.5, half-width 1.96 * sqrt(0.25/200 + 1.96^2/160000) / (1 + 1.96^2/200)
    low, high = bench.wilson_interval(0.5, 200)
    assert low == pytest.approx(0.43136, abs=1e-4) and high == pytest.approx(0.56864, abs=1e-4)
    # never outside [0, 1], and a rate of 0 still leaves room above it
    low, high = bench.wilson_interval(0.0, 10)
    assert low == 0.0 and high == pytest.approx(0.27754, abs=1e-4)
    assert bench.wilson_interval(1.0, 10)[1] == 1.0


def test_report_replaces_only_its_block(load_script, tmp_path):
    bench = load_script("bench_tinyworld_quality")
    doc = tmp_path / "tinyworld.md"
    doc.write_text(f"# TinyWorld\n\nprose before\n\n{bench.START}\nold numbers\n{bench.END}\n\nprose after\n")
    rates = {"all_objects": 0.58, "first_object": 0.58, "background": 0.97, "n": 100}
    results = {
        "date": "d",
        "machine": "m",
        "steps": 25,
        "scheduler": "PNDMScheduler",
        "n": 100,
        "seed": 0,
        "judge_threshold": 0.3,
        "by_guidance": {"3.0": {"single": rates, "double": {**rates, "all_objects": 0.1, "first_object": 0.41}}},
    }
    bench.write_doc(doc, results)
    text = doc.read_text()
    assert "old numbers" not in text and "prose before" in text and "prose after" in text
    assert "| 3.0 | 58.0% (48%-67%) | 97.0% (92%-99%) | 10.0% (6%-17%) | 41.0% (32%-51%) |" in text
