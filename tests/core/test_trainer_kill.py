"""Resume after a real SIGKILL: a training process killed at an arbitrary moment (maybe in the
middle of writing a checkpoint) resumes to the bit-identical result of a run never stopped."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from textloc_core.concepts import Concept, ConceptImage, ConceptSet
from textloc_core.config import TrainConfig
from textloc_core.trainer import train

pytestmark = pytest.mark.slow  # a child process imports torch + diffusers (~10 s)

REPO = Path(__file__).resolve().parents[2]
STEPS = 12


def concept_set() -> ConceptSet:
    gen = torch.Generator().manual_seed(11)
    mask = torch.zeros(16, 16)
    mask[3:11, 4:12] = 1
    images = [ConceptImage(torch.rand(3, 16, 16, generator=gen), {"doll": mask}) for _ in range(2)]
    return ConceptSet([Concept("doll", "<doll1>", "doll")], images)


def config() -> TrainConfig:
    return TrainConfig(steps=STEPS, checkpoint_every=1, learning_rate=1e-3, prior_images_per_class=2, prior_sampling_steps=2)


CHILD = textwrap.dedent(
    """
    import sys, torch
    sys.path[:0] = [{repo!r}, {tests!r}, {here!r}]
    torch.set_num_threads(1)
    from conftest import build_tiny_pipeline_parts
    from test_trainer_kill import concept_set, config
    from textloc_core.backends.diffusers_backend import bundle_from_diffusers
    from textloc_core.trainer import train
    bundle = bundle_from_diffusers(**build_tiny_pipeline_parts())
    print("fingerprint", bundle.fingerprint, flush=True)
    train(bundle, concept_set(), config(), checkpoint_dir={ckpt!r}, on_step=lambda r: print("step", r.step, flush=True))
    """
)


def test_sigkill_mid_run_then_resume_is_bit_identical(tiny_bundle, tmp_path):
    ckpt = tmp_path / "ckpt"
    code = CHILD.format(repo=str(REPO), tests=str(REPO / "tests"), here=str(Path(__file__).parent), ckpt=str(ckpt))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        lines = []
        for line in child.stdout:
            lines.append(line.strip())
            if line.startswith("step 3"):
                os.kill(child.pid, signal.SIGKILL)  # no warning, no cleanup: mid-step or mid-write
                break
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL, lines
    assert f"fingerprint {tiny_bundle.fingerprint}" in lines  # the child built the same base model

    resumed = train(tiny_bundle, concept_set(), config(), checkpoint_dir=ckpt, resume=True)
    full = train(tiny_bundle, concept_set(), config())
    assert resumed.steps_done == STEPS and resumed.history == full.history
    for key, value in full.kv_deltas.items():
        assert torch.equal(value, resumed.kv_deltas[key]), key
    assert torch.equal(full.token_embeddings["<doll1>"], resumed.token_embeddings["<doll1>"])
