"""A real training process for the SIGKILL resume tests (run as a script, not collected).

``python checkpoint_resume_child.py CHECKPOINT_DIR [KILL_AT_STEP]`` trains the tiny model of
benchmarks/tiny_models.py on a fixed two-concept set, resuming from CHECKPOINT_DIR, printing
``step N`` after every step. With KILL_AT_STEP the process SIGKILLs itself in the middle of
writing that step's checkpoint: after its first file reached the temporary folder, before
the folder is renamed into place.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch


def concept_set():
    from textloc_core.data.concepts import Concept, ConceptImage, ConceptSet

    gen = torch.Generator().manual_seed(3)

    def square(top, left, size=6, side=16):
        mask = torch.zeros(side, side)
        mask[top : top + size, left : left + size] = 1
        return mask

    concepts = [Concept("doll", "<doll1>", "doll"), Concept("bucket", "<bucket1>", "bucket")]
    images = [
        ConceptImage(torch.rand(3, 16, 16, generator=gen), {"doll": square(1, 1), "bucket": square(9, 8)}),
        ConceptImage(torch.rand(3, 16, 16, generator=gen), {"bucket": square(2, 9)}),
    ]
    return ConceptSet(concepts, images)


def config():
    from textloc_core.training.config import TrainConfig

    return TrainConfig(
        steps=6, checkpoint_every=1, learning_rate=1e-3, prior_images=2, prior_sampling_steps=2, map_levels="all"
    )


def bundle():
    from benchmarks.tiny_models import build_tiny_pipeline_parts
    from textloc_core.backends.diffusers_backend import bundle_from_diffusers

    return bundle_from_diffusers(**build_tiny_pipeline_parts())


def _kill_during_write_of(step: int) -> None:
    from textloc_core.data import safe_io
    from textloc_core.training import checkpoint

    original = safe_io.commit_temp
    marker = f".{checkpoint.step_dir_name(step)}."

    def commit_then_die(tmp, path):
        result = original(tmp, path)
        if marker in str(path):  # one file of this step's temporary folder is on disk
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    safe_io.commit_temp = commit_then_die


def main() -> None:
    torch.set_num_threads(1)  # as tests/conftest.py: bit-identical results need the same threading
    from textloc_core.training.loop import train

    directory = Path(sys.argv[1])
    if len(sys.argv) > 2:
        _kill_during_write_of(int(sys.argv[2]))
    train(
        bundle(),
        concept_set(),
        config(),
        checkpoint_dir=directory,
        resume=True,
        on_step=lambda report: print(f"step {report.step}", flush=True),
    )
    print("done", flush=True)


if __name__ == "__main__":
    main()
