"""Step time and peak memory of a tiny CPU training run (the numbers in the core's report).

    python scripts/core_tiny_benchmark.py hard 20     # guidance, steps; run once per guidance

Uses the tests' tiny random SD-shaped model, two concepts, 3 images of 16 px, instance
batch 2 + prior batch 2, one CPU thread. Peak memory is the process's peak RSS
(``resource.getrusage``) before and after training, so the difference is what training adds.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.tiny_models import build_tiny_pipeline_parts  # noqa: E402
from textloc_core.backends.diffusers_backend import bundle_from_diffusers  # noqa: E402
from textloc_core.data.concepts import Concept, ConceptImage, ConceptSet  # noqa: E402
from textloc_core.training.config import TrainConfig  # noqa: E402
from textloc_core.training.loop import train  # noqa: E402


def main(guidance: str = "hard", steps: int = 20) -> None:
    torch.set_num_threads(1)
    bundle = bundle_from_diffusers(**build_tiny_pipeline_parts())
    masks = [torch.zeros(16, 16) for _ in range(2)]
    masks[0][1:7, 1:7] = 1
    masks[1][8:15, 8:15] = 1
    concepts = ConceptSet(
        [Concept("doll", "<doll1>", "doll"), Concept("bucket", "<bucket1>", "bucket")],
        [ConceptImage(torch.rand(3, 16, 16), {"doll": masks[0], "bucket": masks[1]}) for _ in range(3)],
    )
    config = TrainConfig(
        guidance=guidance,
        steps=steps,
        prior_images=4,
        prior_sampling_steps=2,
        map_levels="all",
        attention_weight_mode="fixed",
    )  # step times only: no calibration batches before step 1
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds: list[float] = []
    cpu: list[float] = [time.process_time()]

    def on_step(report) -> None:
        # Single-threaded, so CPU time per step is the step's cost even on a loaded machine.
        seconds.append(report.seconds)
        cpu.append(time.process_time())

    began = time.perf_counter()
    train(bundle, concepts, config, on_step=on_step)
    total = time.perf_counter() - began
    cpu_steps = [b - a for a, b in zip(cpu[1:], cpu[2:])]  # from step 2 on (step 1 includes setup)
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"guidance={guidance} steps={steps} median_step_ms={statistics.median(seconds) * 1000:.1f} "
        f"median_step_cpu_ms={statistics.median(cpu_steps) * 1000:.1f} "
        f"total_s={total:.2f} peak_rss_mib={rss_after:.0f} added_by_training_mib={rss_after - rss_before:.0f}"
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "hard", int(sys.argv[2]) if len(sys.argv) > 2 else 20)
