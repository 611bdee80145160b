"""Nothing lost: a real training process SIGKILLed mid-run, and again mid-checkpoint-write,
resumes to exactly (bit for bit) the adapter an uninterrupted run produces.

The training process is tests/core/training/checkpoint_resume_child.py (the tiny model of
benchmarks/tiny_models.py, a fixed two-concept set, a checkpoint every step).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from textloc_core.training import checkpoint as ck
from textloc_core.training.loop import train

CHILD = Path(__file__).with_name("checkpoint_resume_child.py")
REPO = Path(__file__).resolve().parents[3]


def _child_module():
    spec = importlib.util.spec_from_file_location("checkpoint_resume_child", CHILD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


@pytest.mark.slow
def test_sigkilled_training_resumes_bit_identically(tmp_path):
    child = _child_module()
    run_dir = tmp_path / "run"

    # 1. killed from outside right after step 3 was reported (so, somewhere inside step 4)
    proc = subprocess.Popen([sys.executable, str(CHILD), str(run_dir)], stdout=subprocess.PIPE, text=True, env=_env())
    try:
        for line in proc.stdout:
            if line.strip() == "step 3":
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    first_survivor = ck.load_latest_checkpoint(run_dir).step
    assert first_survivor in (3, 4)

    # 2. resumed in a new process, which is killed halfway through writing step 5's checkpoint
    second = subprocess.run(
        [sys.executable, str(CHILD), str(run_dir), "5"], capture_output=True, text=True, env=_env(), timeout=600
    )
    assert second.returncode == -signal.SIGKILL, second.stderr[-2000:]
    printed = [int(line.split()[1]) for line in second.stdout.splitlines() if line.startswith("step")]
    assert printed and printed[0] == first_survivor + 1  # it resumed, it did not start over
    assert [p.name for p in run_dir.iterdir() if p.name.startswith(".step-000000005")], "the kill was not mid-write"
    assert ck.load_latest_checkpoint(run_dir).step == 4  # the half-written step 5 is ignored

    # 3. resume to the end here, and compare with a run that was never interrupted
    cfg = child.config()
    resumed = train(child.bundle(), child.concept_set(), cfg, checkpoint_dir=run_dir, resume=True)
    reference = train(child.bundle(), child.concept_set(), cfg, checkpoint_dir=tmp_path / "ref")
    assert resumed.steps_done == reference.steps_done == cfg.steps
    assert resumed.history == reference.history
    for key, value in reference.kv_deltas.items():
        assert torch.equal(resumed.kv_deltas[key], value), key
    for token, value in reference.token_embeddings.items():
        assert torch.equal(resumed.token_embeddings[token], value), token
