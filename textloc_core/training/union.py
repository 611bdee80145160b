"""Break-A-Scene's union sampling for multi-concept sets (``TrainConfig.union_sampling``).

Each step, each instance photo is trained on a random non-empty subset of the concepts it
shows: its prompt names only those, and only their masks reach the attention loss and the
masked denoising loss. Every concept is then also learned apart from the others it stands
beside, instead of only ever as part of the same group.
"""

from __future__ import annotations

import torch

from .setup import TrainingRun, build_prompt


def union_active(run: TrainingRun) -> bool:
    """Union sampling is on and some photo names more than one concept (else it changes nothing)."""
    return run.config.union_sampling and any(len(item.masks) > 1 for item in run.concept_set.images)


def draw_subsets(run: TrainingRun, inst: torch.Tensor, generator: torch.Generator) -> list[list[str]]:
    """For each instance row, the names of a random non-empty subset of the concepts its photo
    shows (in concept-set order): a size from 1 to all, uniformly, then that many at random."""
    order = [c.name for c in run.concept_set.concepts]
    subsets = []
    for i in inst.tolist():
        shown = [n for n in order if n in run.concept_set.images[i].masks]
        size = int(torch.randint(1, len(shown) + 1, (1,), generator=generator))
        picked = {shown[int(j)] for j in torch.randperm(len(shown), generator=generator)[:size]}
        subsets.append([n for n in shown if n in picked])
    return subsets


def subset_rows(run: TrainingRun, inst: torch.Tensor, subsets: list[list[str]]) -> tuple[list[str], torch.Tensor]:
    """(prompt, (B, K, H, W) masks) of each instance row: the prompt names only its subset, and
    the masks of the concepts left out are zero."""
    prompts = [build_prompt(run.config, run.concept_set, names) for names in subsets]
    keep = torch.tensor([[c.name in names for c in run.concept_set.concepts] for names in subsets], dtype=torch.float32)
    masks = run.masks[inst] * keep[:, :, None, None]
    return prompts, masks
