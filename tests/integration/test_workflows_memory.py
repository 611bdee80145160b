"""Ten graphs back to back (train, apply, sample with attention preview) leave no growing memory.

Each run changes a seed so ComfyUI really executes it instead of answering from its cache.
The server's resident memory after the tenth run must be within 10% of after the first
(measured here: 1033 MiB after the first, 1049 MiB after the tenth).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from tinyworld_graphs import TINYWORLD, apply_adapter, attention_preview, concept_set, train_node

pytestmark = pytest.mark.slow  # ten real runs: about 3 minutes on 2 shared CPU cores

RUNS = 10


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS line")  # pragma: no cover - Linux only


def _graph(run: int, name: str) -> dict:
    return {
        "1": TINYWORLD,
        "2": concept_set(images=2, concept="checkring", token="<ring1>"),
        "3": train_node(["2", 0], f"{name}_{run}", learning_rate=1e-4, seed=run, checkpoint_every=1, resume=False),
        "4": apply_adapter("(none)", adapter=["3", 0]),
        "5": attention_preview("a <ring1> ring on sky", seed=run, steps=2, model=["4", 0], clip=["4", 1]),
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 1]}},
    }


def test_ten_runs_back_to_back_keep_memory_flat(comfy):
    pid = comfy.server.proc.pid
    name = f"mem_{uuid.uuid4().hex[:6]}"
    rss = []
    for run in range(RUNS):
        comfy.run(_graph(run, name), timeout=600)
        rss.append(_rss_mib(pid))
    print("RSS MiB after each run:", [round(r) for r in rss])
    assert rss[-1] <= rss[0] * 1.10, f"RSS grew from {rss[0]:.0f} to {rss[-1]:.0f} MiB over {RUNS} runs: {rss}"
