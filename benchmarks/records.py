"""Raw records of benchmark runs: one JSON line per run, committed, from which every table
and figure of docs/results.md is written (scripts/results_tables.py, scripts/results_figure.py).

A record holds every metric of the run, its settings (the protocol and the TrainConfig it
trained with), the seed, what the run was for (``phase``: "dev" runs choose a recipe,
"heldout" runs are the evidence), the name of its recipe and the code version it ran.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import subprocess
from dataclasses import asdict
from pathlib import Path

from textloc_core.training.config import current_keys

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "benchmarks" / "records"
"""Where the committed records live, one ``*.jsonl`` file per invocation of a bench."""
METRICS = (
    "clip_i",
    "clip_i_pair",
    "clip_t",
    "kid",
    "iou",
    "attn_other",
    "fidelity",
    "fidelity_cs",
    "leakage",
    "alignment",
)
"""The metric keys of a bench_methods row (its COLUMNS), kept in ``record["metrics"]``."""
CONTEXT_ROWS = {
    "base": "base model, class word (context)",
    "words": "base model, concept in words (context)",
    "renders": "real renders (context)",
}
"""The rows that train nothing (their ``method``) and their names in the tables: the base model
given the class word where the token would be ("a star"), the base model told the concept in
words ("an orange dotted star": the most a token could add on this base model), and renders of
the concept itself (the judge's and CLIP's own ceiling)."""
KEYS = ("setting", "pair", "seed", "method")
"""What identifies a run within a recipe and phase."""


def code_version() -> str:
    """The commit the code ran from, with "+modified" when tracked files differed from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    return commit + ("+modified" if git("status", "--porcelain", "--untracked-files=no") else "")


def _number(value):
    """JSON has no NaN: a metric that does not apply (a context row's IoU) is stored as null."""
    return None if isinstance(value, float) and math.isnan(value) else value


def record(row: dict, protocol, config, recipe: str, phase: str, code: str) -> dict:
    """The record of one bench row: its keys, metrics, timings, settings and provenance
    (``code``: ``code_version()`` taken when the bench started, the code its workers loaded)."""
    return {
        "phase": phase,
        "recipe": recipe,
        **{k: row[k] for k in KEYS},
        "metrics": {k: _number(row[k]) for k in METRICS if k in row},
        "effective_attention_weight": row.get("effective_attention_weight"),
        "train_s": row.get("train_s"),
        "total_s": row.get("total_s"),
        "config": None if config is None else json.loads(config.to_json()),
        "protocol": asdict(protocol),
        "code": code,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def append_record(path: Path, rec: dict) -> None:
    """Append one record as a JSON line (the file and its folder are created when missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(rec, sort_keys=True) + "\n")


def load(folder: Path = RECORDS) -> list[dict]:
    """Every record of every ``*.jsonl`` file in ``folder``, in file then line order; a run
    recorded twice (same phase, recipe and keys) keeps its last record."""
    found: dict[tuple, dict] = {}
    for path in sorted(Path(folder).glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = current_names(json.loads(line))
                found[(rec["phase"], rec["recipe"], *(rec[k] for k in KEYS))] = rec
    return list(found.values())


WEIGHT_NAMES = ("effective_attention_weight", "lambda_attn_used", "attention_weight")
"""The record's key of the attention weight a run used, today's first, then its former names."""


def current_names(rec: dict) -> dict:
    """A record as today's code names its fields: committed records are never rewritten, so a
    metric, the weight or a TrainConfig setting recorded under a former name is renamed here."""
    rec = dict(rec, metrics=dict(rec["metrics"]))
    if "clip_i_paper" in rec["metrics"]:  # the same metric, recorded under its former name
        rec["metrics"]["clip_i_pair"] = rec["metrics"].pop("clip_i_paper")
    weight = next((rec.pop(k) for k in WEIGHT_NAMES if k in rec), None)
    for k in WEIGHT_NAMES:
        rec.pop(k, None)
    rec["effective_attention_weight"] = weight
    if isinstance(rec.get("config"), dict):
        rec["config"] = current_keys(rec["config"])
    return rec


def recipe_name(protocol) -> str:
    """A short name of the levers a protocol sets beside the method ("plain" when none):
    e.g. ``masked 0, warm-up 30 @ 0.005, V only, union, prior 50``."""
    parts = []
    if protocol.unmasked_weight != 1:
        parts.append(f"masked {protocol.unmasked_weight:g}")
    if protocol.preservation_weight:
        parts.append(f"preserve {protocol.preservation_weight:g}")
    if protocol.outside_preservation_weight:
        parts.append(f"outside {protocol.outside_preservation_weight:g}")
    if protocol.other_object_rate:
        parts.append(f"objects {protocol.other_object_rate:g}")
    if protocol.token_warmup_steps:
        parts.append(f"warm-up {protocol.token_warmup_steps} @ {protocol.token_warmup_lr:g}")
    if not protocol.train_keys:
        parts.append("V only")
    if protocol.union_sampling:
        parts.append("union")
    if protocol.prior_images:
        parts.append(
            f"prior {protocol.prior_images}"
            + ("" if protocol.class_prompt == "{class_word}" else f" '{protocol.class_prompt}'")
        )
    if protocol.train_map_levels != "all_but_finest":
        parts.append(f"maps {protocol.train_map_levels}")
    if protocol.steps != 100 or protocol.learning_rate != 3e-3:
        parts.append(f"{protocol.steps} steps @ {protocol.learning_rate:g}")
    return ", ".join(parts) or "plain"
