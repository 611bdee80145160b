"""How much the calibrated attention weight varies between runs, by the number of batches it
is averaged over (``TrainConfig.calibration_batches``), on TinyWorld at the bench's recipe.

    python scripts/calibration_spread.py                  # 3 pairs x 3 seeds x single/multi, hard
    python scripts/calibration_spread.py --batches 16 --method soft

For every (pair, seed, setting) it measures the two gradient norms on the batches of steps
0 .. N-1 (the batches training would draw; nothing is updated) and prints, for each K in 1, 2,
4, ..., N, the weight calibration with K batches gives: per run, and the spread over runs
(max/min and the geometric standard deviation). A weight that depends on the pair and the
model but not on which timesteps the first batch drew has a small spread within a pair.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks import tinyworld_protocol as protocol  # noqa: E402
from textloc_core.training.loop import train  # noqa: E402
from textloc_core.training.setup import setup  # noqa: E402
from textloc_core.training.step import gradient_norms, weight_from_norms  # noqa: E402


def norms_per_batch(
    p: protocol.Protocol, pair: str, seed: int, setting: str, method: str, batches: int
) -> list[tuple[float, float]]:
    """(denoise, attention) gradient norms of steps 0..batches-1 of one bench run."""
    w = protocol.world(False)
    config = replace(protocol.train_config(p, f"{method}@cal", seed), calibration_batches=batches)
    with torch.enable_grad():
        run = setup(w["bundle"], protocol.concept_set_for(pair, seed, setting, p.init_word), config)
        with run.hooks():
            return [gradient_norms(run, step) for step in range(batches)]


def cost_in_steps(p: protocol.Protocol, method: str, batches: int, steps: int = 20) -> float:
    """Seconds of one calibration batch over seconds of one training step, timed side by side
    in this process (dotstar, seed 0, single-concept; the weight fixed so training has no
    calibration of its own)."""
    concepts = protocol.concept_set_for("dotstar", 0, "single", p.init_word)
    began = time.perf_counter()
    norms_per_batch(p, "dotstar", 0, "single", method, batches)
    per_batch = (time.perf_counter() - began) / batches
    config = replace(protocol.train_config(p, f"{method}@0.1", 0), steps=steps)
    began = time.perf_counter()
    train(protocol.world(False)["bundle"], concepts, config)
    return per_batch / ((time.perf_counter() - began) / steps)


def spread(values: list[float]) -> tuple[float, float]:
    """(max/min, geometric standard deviation) of positive values."""
    logs = [math.log(v) for v in values]
    return max(values) / min(values), math.exp(statistics.pstdev(logs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", default=",".join(protocol.Protocol.pairs))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--settings", default="single,multi")
    parser.add_argument("--method", default="hard", choices=("hard", "soft"))
    parser.add_argument("--batches", type=int, default=16, help="the most batches averaged over")
    parser.add_argument("--fraction", type=float, default=1.0, help="attention_fraction")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    p = protocol.Protocol()
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= args.batches]
    table: dict[tuple, list[float]] = {}
    print(
        f"calibrated weight ({args.method}, fraction {args.fraction:g}) per run, by K batches averaged: "
        + " ".join(f"K={k}" for k in ks),
        flush=True,
    )
    for setting in args.settings.split(","):
        for pair in args.pairs.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                norms = norms_per_batch(p, pair, seed, setting, args.method, args.batches)
                row = [weight_from_norms(norms[:k], args.fraction) for k in ks]
                table[(setting, pair, seed)] = row
                print(f"{setting:6s} {pair:9s} seed {seed}: " + " ".join(f"{w:9.4f}" for w in row), flush=True)
    print(
        f"\none calibration batch costs {cost_in_steps(p, args.method, args.batches):.2f} training steps "
        "(set-up included in both)"
    )
    print("\nspread over runs: max/min, geometric sd (all runs; then the worst pair across its seeds)")
    for i, k in enumerate(ks):
        for setting in args.settings.split(","):
            runs = {key: row[i] for key, row in table.items() if key[0] == setting}
            overall = spread(list(runs.values()))
            within = max(spread([v for key, v in runs.items() if key[1] == pair])[0] for pair in args.pairs.split(","))
            print(
                f"K={k:<3d} {setting:6s} all runs: max/min {overall[0]:6.2f}, geo sd {overall[1]:5.2f};"
                f" within a pair, worst max/min {within:6.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
