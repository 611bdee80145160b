"""Performance benchmark: what attention guidance costs, against Custom Diffusion and the paper's way.

For each model configuration it trains, through the real trainer (``textloc_core.training``):

* ``none``   Custom Diffusion (no capture, no attention loss),
* ``hard`` / ``soft``  Textual Localization with our capture (explicit softmax only at the
  loss's attn2 layers, only the concept tokens' head-averaged columns kept),
* ``store``  the store-everything reference (``benchmarks.reference_mode``): method hard,
  but every attention layer, self-attention included, explicit, and every attn2 map of all
  heads and all 77 tokens stored, as the paper's code does,
* ``hard-coarse`` method hard with ``map_levels=(2,)``: the token map from the second-finest
  attention resolution only (SDXL at 1024 px: the 32 grid; the default, "all_but_finest",
  keeps both of SDXL's grids, 64 and 32),

and records the median time of the warm steps and the peak memory of the steady state
(after the first step, when the optimizer state exists): on CPU the process's resident-set
high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``; one fresh subprocess per
mode), on CUDA ``torch.cuda.max_memory_allocated``. It also times DDIM sampling with and
without token-map capture on the same graph, and on CUDA counts a step's FLOPs
(``FlopCounterMode``) and estimates a full 400-step concept including prior generation.

Configurations (``--configs``):

    tinyworld-cpu   TinyWorld architecture (random init), 64 px, batch 2 + 2 prior, CPU
    sd15-256-cpu    SD1.5 architecture (random init), 256 px, batch 2 + 2 prior, CPU
    sd15-512-gpu    SD1.5 architecture (random init), 512 px, batch 2 + 2 prior, CUDA, bf16
    sdxl-256-cpu    SDXL architecture (random init), transformer depth 2 at 1280 channels
                    (SDXL: 10; the full model does not fit), 256 px, batch 1 + 1, CPU, bf16
    sdxl-512-cpu    the same at 512 px
    sdxl-1024-gpu   SDXL architecture (random init, full), 1024 px, batch 1 + 1, CUDA, bf16

``--extras checkpointing`` repeats none / hard / hard-coarse with gradient checkpointing (``+ckpt``);
``--rounds N`` repeats the training modes N times, interleaved, and keeps each one's median round.

Timing does not depend on weight values, so random weights measure what real ones would.
Results merge into ``docs/performance.json`` (keyed by configuration, with date and machine)
and ``docs/performance.md`` is regenerated from it:

    python scripts/bench_performance.py --configs tinyworld-cpu sd15-256-cpu
    python scripts/bench_performance.py --configs sd15-512-gpu --json $OUT/performance.json
    python scripts/bench_performance.py --configs sdxl-256-cpu sdxl-512-cpu --extras checkpointing,sampling --rounds 2
    python scripts/bench_performance.py --configs sdxl-1024-gpu --json $OUT/performance.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

MODES = ("none", "hard", "soft", "store", "hard-coarse")
"""``hard-coarse``: method hard with ``map_levels=(2,)``: the token map from the second-finest
attention resolution only (SDXL: its coarser grid, 32 at 1024 px) instead of the default
``"all_but_finest"`` (SDXL: both of its grids, the 64 and the 32)."""
CHECKPOINTED = ("none", "hard", "hard-coarse")
"""The modes the ``checkpointing`` extra repeats with gradient checkpointing (those requested)."""
TOKEN = "<doll1>"


@dataclass(frozen=True)
class World:
    """One benchmark configuration."""

    name: str
    model: str  # "tinyworld" or "sd15"
    device: str
    resolution: int
    instance_batch: int = 2
    prior_batch: int = 2
    warmup: int = 2
    steps: int = 10
    sampling_steps: int = 10
    sampling_batch: int = 2
    text_layers: int | None = None  # SD1.5 text tower depth (None: the full 12)
    transformer_depth: int | None = None  # SDXL: transformer blocks per 1280-channel block (None: the full 10)
    weights: str | None = None  # "bf16" (frozen weights bf16, bf16 autocast) or "fp32"; None: bf16 on CUDA, fp32 on CPU
    modes: tuple[str, ...] = ("none", "hard", "soft", "store")  # the default of --modes
    n_images: int = 5  # training photos (only the VAE encoding at setup depends on it)
    one_process: bool = False  # CPU: all modes in one process (VmHWM is reset per mode anyway)

    @property
    def precision(self) -> str:
        return self.weights or ("bf16" if self.device == "cuda" else "fp32")


SDXL_MODES = ("none", "hard", "hard-coarse", "store")
"""The modes of the SDXL configurations: ``hard-coarse`` too (SDXL has two attention grids)."""
SMALL_CPU_RUN = {
    "instance_batch": 1,
    "prior_batch": 1,
    "warmup": 1,
    "sampling_steps": 2,
    "sampling_batch": 1,
    "n_images": 2,
    "one_process": True,
}
"""Batch 1 + 1, one warm-up step, two sampling steps, two photos, one process: the full-size
models on the CPU, where one step takes minutes; the ratios, not the absolute times, are the point."""
SDXL_ON_CPU = {**SMALL_CPU_RUN, "transformer_depth": 2, "weights": "bf16", "modes": SDXL_MODES}
"""SDXL on the CPU: the full UNet (2.6B) does not fit next to its 341M trainable K/V
parameters' fp32 AdamW state (5.1 GiB) in a ~10 GiB share of a 24 GiB machine, so the
1280-channel transformer stacks are 2 deep instead of 10 (0.9B, 89M trainable); widths,
heads, context 2048, both full text towers, attention levels and conditioning are SDXL's.
bf16 weights + autocast as on the GPU: fp32 peaks above 10 GiB here and is 2x slower."""

WORLDS = {
    "tinyworld-cpu": World(
        "tinyworld-cpu", "tinyworld", "cpu", 64, warmup=3, steps=15, sampling_steps=25, sampling_batch=4
    ),
    # 2 timed steps: on the 2 shared cores of our CI-class machine one SD1.5 step at 256 px takes minutes
    "sd15-256-cpu": World("sd15-256-cpu", "sd15", "cpu", 256, steps=2, **SMALL_CPU_RUN),
    "sd15-512-gpu": World("sd15-512-gpu", "sd15", "cuda", 512, warmup=3, steps=10, sampling_steps=25, sampling_batch=4),
    "sdxl-256-cpu": World("sdxl-256-cpu", "sdxl", "cpu", 256, steps=3, **SDXL_ON_CPU),
    # the same at 512 px: attention grids 32 and 16, so guiding both (the default) adds a 1024-pixel level
    "sdxl-512-cpu": World("sdxl-512-cpu", "sdxl", "cpu", 512, steps=2, **SDXL_ON_CPU),
    "sdxl-1024-gpu": World(
        "sdxl-1024-gpu",
        "sdxl",
        "cuda",
        1024,
        instance_batch=1,
        prior_batch=1,
        warmup=3,
        steps=10,
        sampling_steps=25,
        sampling_batch=2,
        modes=SDXL_MODES,
    ),
}
TINY_TEST_WORLD = World("tiny-smoke", "tiny", "cpu", 16, warmup=1, steps=2, sampling_steps=2, sampling_batch=1)
TINY_SDXL_TEST_WORLD = replace(
    TINY_TEST_WORLD, name="tiny-sdxl-smoke", model="tiny-sdxl", resolution=32, one_process=True, modes=SDXL_MODES
)
"""The test-suite-sized models (SD1.x- and SDXL-shaped); ``--configs tiny-smoke`` / ``tiny-sdxl-smoke``
check the harness end to end in seconds."""
TEST_WORLDS = {w.name: w for w in (TINY_TEST_WORLD, TINY_SDXL_TEST_WORLD)}


# ----------------------------------------------------------------------------- model + data
def build_bundle(world: World):
    """A ``ModelBundle`` of random-init diffusers/transformers models for ``world``."""
    from transformers import CLIPTokenizer

    from textloc_core.backends.diffusers_backend import bundle_from_diffusers

    tokenizer = CLIPTokenizer.from_pretrained(str(REPO / "textloc_core" / "tinyworld" / "weights" / "tokenizer"))
    dtype = torch.bfloat16 if world.precision == "bf16" else torch.float32
    torch.manual_seed(0)
    if world.model == "sdxl":
        from benchmarks import sdxl_models as xl

        with torch.device(world.device):  # initialise on the device: 3.5B parameters in all
            unet = xl.build_sdxl_unet(
                sample_size=world.resolution // 8,
                transformer_depth=world.transformer_depth,
                dtype=dtype,
                device=world.device,
            )
            vae = xl.build_sdxl_vae(dtype=dtype, device=world.device)
            text, text_2 = xl.build_sdxl_text_encoders(dtype=dtype, device=world.device)
        # SDXL's second tokenizer: the same BPE, padding with "!" (token 0) instead of end-of-text
        tokenizer_2 = CLIPTokenizer.from_pretrained(
            str(REPO / "textloc_core" / "tinyworld" / "weights" / "tokenizer"), pad_token="!"
        )
        return bundle_from_diffusers(
            unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer, text_encoder_2=text_2, tokenizer_2=tokenizer_2
        )
    if world.model == "sd15":
        from benchmarks import sd15_models as sd

        with torch.device(world.device):  # initialise on the device: 860M parameters
            unet = sd.build_sd15_unet(sample_size=world.resolution // 8, dtype=dtype, device=world.device)
            vae = sd.build_sd15_vae(dtype=dtype, device=world.device)
            text = sd.build_sd15_text_encoder(num_layers=world.text_layers, dtype=dtype, device=world.device)
    elif world.model == "tinyworld":
        from transformers import CLIPTextModel

        from textloc_core.tinyworld import model_configs as tw

        unet, vae = tw.build_unet(), tw.build_vae()
        text = CLIPTextModel(tw.clip_text_config())
        unet, vae, text = (m.to(world.device, dtype) for m in (unet, vae, text))
    elif world.model in ("tiny", "tiny-sdxl"):
        from benchmarks import tiny_models

        if world.model == "tiny-sdxl":
            return bundle_from_diffusers(**tiny_models.build_tiny_sdxl_parts())
        parts = tiny_models.build_tiny_pipeline_parts()
        unet, vae, text, tokenizer = parts["unet"], parts["vae"], parts["text_encoder"], parts["tokenizer"]
    else:
        raise ValueError(f"world {world.name}: unknown model {world.model!r}")
    return bundle_from_diffusers(unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer)


def synthetic_concept_set(resolution: int, n_images: int = 5):
    """Five random photos of one concept with rectangular masks (timing ignores content)."""
    from textloc_core.data.concepts import Concept, ConceptImage, ConceptSet

    g = torch.Generator().manual_seed(0)
    images = []
    for i in range(n_images):
        mask = torch.zeros(resolution, resolution)
        lo, hi = resolution // 8 + i, resolution // 2 + i
        mask[lo:hi, lo + resolution // 8 : hi + resolution // 4] = 1
        images.append(ConceptImage(image=torch.rand(3, resolution, resolution, generator=g), masks={"doll": mask}))
    return ConceptSet(concepts=[Concept("doll", TOKEN, "doll")], images=images)


def train_config(world: World, mode: str, steps: int, **overrides):
    from textloc_core.training.config import TrainConfig

    if mode == "hard-coarse":
        overrides = {"map_levels": (2,), **overrides}
    return TrainConfig(
        guidance="hard" if mode in ("store", "hard-coarse") else mode,
        steps=steps,
        instance_batch=world.instance_batch,
        prior_batch=world.prior_batch,
        # a handful of cheap prior latents: prior generation is timed separately (concept_time)
        prior_images=max(4, world.prior_batch) if world.device == "cuda" else world.prior_batch,
        prior_sampling_steps=2 if world.device == "cuda" else 1,
        mixed_precision=world.precision,
        checkpoint_every=10**9,
        # a step costs the same at any weight; fixed keeps the one-off calibration batches out of the step times
        attention_weight_mode="fixed",
        **overrides,
    )


def train_short(world: World, bundle, concept_set):
    """A one-step ``TrainResult`` (an adapter to sample with)."""
    from textloc_core.training.loop import train

    return train(bundle, concept_set, train_config(world, "hard", 1))


def model_bundle_for(bundle, mode: str):
    from benchmarks.reference_mode import store_everything_bundle

    return store_everything_bundle(bundle) if mode == "store" else bundle


# ----------------------------------------------------------------------------- memory probes
def _vm_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def release_freed_memory() -> None:
    """Hand the memory freed so far back to the OS (glibc ``malloc_trim``), so the RSS is what
    is alive: without it, an earlier mode's freed activations stay resident and raise the
    baseline of every later mode of the same process. No-op where there is no glibc."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class MemoryProbe:
    """Peak memory since ``reset()``: CUDA allocator peak, or the process's RSS high-water."""

    def __init__(self, device: str):
        self.device = device
        self.baseline = 0

    def current(self) -> int:
        if self.device == "cuda":
            return torch.cuda.memory_allocated()
        return _vm_kib("VmRSS") * 1024

    def reset(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            release_freed_memory()
            # Linux: writing 5 resets VmHWM (and ru_maxrss) to the current RSS
            Path("/proc/self/clear_refs").write_text("5")
        self.baseline = self.current()

    def peak(self) -> int:
        if self.device == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return _vm_kib("VmHWM") * 1024


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- measurements
def measure_training(world: World, bundle, concept_set, mode: str, *, gradient_checkpointing: bool = False):
    """Warm-step median time and steady-state peak memory of one mode through ``train``;
    returns (measurements, the ``TrainResult``)."""
    from textloc_core.training.loop import train

    probe = MemoryProbe(world.device)
    times: list[float] = []
    cpu_times: list[float] = []
    marks: dict[str, float] = {}

    def on_step(report) -> None:
        _sync(world.device)
        now, cpu = time.perf_counter(), time.process_time()
        if report.step > 1:
            times.append(now - marks["last"])
            cpu_times.append(cpu - marks["last_cpu"])
        if report.step == 1:  # optimizer state now exists: measure the steady state from here
            probe.reset()
            marks["baseline"] = probe.baseline
        marks["last"], marks["last_cpu"] = time.perf_counter(), time.process_time()

    config = train_config(world, mode, world.warmup + world.steps, gradient_checkpointing=gradient_checkpointing)
    release_freed_memory()
    started = time.perf_counter()
    result = train(model_bundle_for(bundle, mode), concept_set, config, on_step=on_step)
    total = time.perf_counter() - started
    warm = times[world.warmup - 1 :]
    median = statistics.median(warm)
    return {
        "mode": mode,
        "gradient_checkpointing": gradient_checkpointing,
        "step_s_median": median,
        "steps_per_s": 1.0 / median,
        "step_s_all": times,
        # CPU seconds of this process per step: on a shared CPU, what the step itself cost
        "step_cpu_s_median": statistics.median(cpu_times[world.warmup - 1 :]),
        "step_cpu_s_all": cpu_times,
        "warm_steps": len(warm),
        "peak_bytes": probe.peak(),
        "resident_between_steps_bytes": int(marks["baseline"]),
        "step_extra_bytes": probe.peak() - int(marks["baseline"]),
        "train_call_s": total,
    }, result


def count_step_flops(world: World, bundle, concept_set, mode: str) -> float:
    """FLOPs of one training step (forward + backward + optimizer), by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    from textloc_core.training.loop import train

    counter = FlopCounterMode(display=False)
    counted: dict[str, float] = {}

    def on_step(report) -> None:
        if report.step == 1:
            counter.__enter__()
        elif report.step == 2:
            counter.__exit__(None, None, None)
            counted["flops"] = float(counter.get_total_flops())

    train(model_bundle_for(bundle, mode), concept_set, train_config(world, mode, 2), on_step=on_step)
    return counted["flops"]


def measure_sampling(world: World, bundle, adapter, repeats: int = 2) -> dict:
    """``api.generate`` (DDIM + CFG + VAE decode) of the same prompt, seed and adapter, with
    and without the token-map capture the attention-map preview uses (``maps_for``)."""
    from textloc_core.api import generate

    def run(capture: bool) -> tuple[float, float]:
        _sync(world.device)
        began, cpu = time.perf_counter(), time.process_time()
        generate(
            bundle,
            f"photo of a {TOKEN} doll",
            adapters=[adapter],
            num_images=world.sampling_batch,
            steps=world.sampling_steps,
            size=(world.resolution, world.resolution),
            maps_for=[TOKEN] if capture else (),
        )
        _sync(world.device)
        return time.perf_counter() - began, time.process_time() - cpu

    run(True)  # warm-up (kernel selection, allocator)
    plain, captured = [], []
    for _ in range(repeats):  # alternate, so drifting machine load hits both alike
        plain.append(run(False))
        captured.append(run(True))
    p, c = statistics.median(w for w, _ in plain), statistics.median(w for w, _ in captured)
    p_cpu, c_cpu = statistics.median(u for _, u in plain), statistics.median(u for _, u in captured)
    return {
        "batch": world.sampling_batch,
        "steps": world.sampling_steps,
        "cfg": True,
        "plain_s": p,
        "capture_s": c,
        "capture_over_plain": c / p,
        "plain_cpu_s": p_cpu,
        "capture_cpu_s": c_cpu,
        "capture_over_plain_cpu": c_cpu / p_cpu,
        "plain_s_all": [w for w, _ in plain],
        "capture_s_all": [w for w, _ in captured],
    }


def measure_concept_time(
    world: World, bundle, step_s: float, *, images: int = 200, sampling_steps: int = 50, generate: int = 16
) -> dict:
    """Time of a full 400-step concept including prior generation, on the trainer's prior path.

    Generates ``generate`` of the ``images`` prior latents with ``prior.prior_latents``
    (DDIM, CFG, the trainer's own batch size), and extrapolates linearly to ``images``.
    """
    from textloc_core.training import prior
    from textloc_core.training.config import TrainConfig

    side = world.resolution // bundle.denoiser.vae_scale_factor
    config = TrainConfig(prior_sampling_steps=sampling_steps, seed=1)
    # warm-up call with a different seed, so the timed call is not served from the cache
    prior.prior_latents(
        bundle, "doll", prior.GENERATION_BATCH, (side, side), TrainConfig(prior_sampling_steps=2, seed=2)
    )
    _sync(world.device)
    began = time.perf_counter()
    prior.prior_latents(bundle, "doll", generate, (side, side), config)  # the trainer's own call
    _sync(world.device)
    measured = time.perf_counter() - began
    prior_total = measured * images / generate
    train_total = 400 * step_s
    return {
        "prior_images": images,
        "prior_sampling_steps": sampling_steps,
        "prior_generation_batch": prior.GENERATION_BATCH,
        "prior_images_measured": generate,
        "prior_measured_s": measured,
        "prior_extrapolated_s": prior_total,
        "train_400_steps_s": train_total,
        "concept_total_s": prior_total + train_total,
        "note": f"prior time measured for {generate} of {images} images and scaled linearly; "
        "400 steps at the measured hard-mode median step time",
    }


# ----------------------------------------------------------------------------- orchestration
def machine() -> dict:
    info = {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "loadavg": list(os.getloadavg()),
    }
    try:
        import diffusers
        import transformers

        info["diffusers"], info["transformers"] = diffusers.__version__, transformers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
    return info


def run_worker(world: World, modes: list[str], extras: list[str], partial: Path | None = None, rounds: int = 1) -> dict:
    """Everything for ``world`` that runs in this one process.

    ``rounds`` > 1 repeats the training modes (and their checkpointed variants) that often,
    interleaved (none, hard, ..., store, none, hard, ...), and keeps each mode's median round
    (``_merge_rounds``), so load drifting on a shared machine hits every mode alike. Freed
    memory is handed back to the OS before each mode's peak is taken (``release_freed_memory``).
    Each measurement is guarded: a failure is recorded as ``<name>_error`` and the rest still
    runs; with ``partial`` the results so far are written there after every measurement, so
    a run cut off by a time limit still leaves its numbers.
    """
    torch.manual_seed(0)
    t0 = time.perf_counter()
    bundle = build_bundle(world)
    concept_set = synthetic_concept_set(world.resolution, world.n_images)
    out: dict = {"build_s": time.perf_counter() - t0, "threads": torch.get_num_threads(), "modes": {}}
    state: dict = {"trained": None}

    def guarded(name: str, work) -> None:
        try:
            work()
        except Exception as error:  # recorded, not hidden: the report quotes it
            out[f"{name}_error"] = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
            print(f"[{world.name}] {name} failed: {out[f'{name}_error']}", flush=True)
        gc.collect()
        if world.device == "cuda":
            torch.cuda.empty_cache()
        if partial is not None:
            partial.write_text(json.dumps(out, indent=1))

    per_round: dict[str, list[dict]] = {}

    def train_mode(mode: str, checkpointing: bool = False) -> None:
        key = f"{mode}+ckpt" if checkpointing else mode
        r, trained = measure_training(world, bundle, concept_set, mode, gradient_checkpointing=checkpointing)
        if world.device == "cuda":  # on CPU its fp32 delta copies would stay in every later mode's RSS
            state["trained"] = state["trained"] or trained
        del trained
        per_round.setdefault(key, []).append(r)
        out["modes"][key] = _merge_rounds(per_round[key])
        print(
            f"[{world.name}] {key}: {r['step_s_median']:.4f} s/step ({r['step_cpu_s_median']:.2f} CPU s), "
            f"peak {r['peak_bytes'] / 2**30:.2f} GiB",
            flush=True,
        )

    def sampling() -> None:
        # any TrainResult is an adapter to sample with (timing does not depend on its values)
        out["sampling"] = measure_sampling(world, bundle, state["trained"] or train_short(world, bundle, concept_set))
        print(f"[{world.name}] sampling: capture/plain {out['sampling']['capture_over_plain']:.3f}", flush=True)

    def concept() -> None:
        hard = out["modes"].get("hard") or measure_training(world, bundle, concept_set, "hard")[0]
        out["concept_400"] = measure_concept_time(world, bundle, hard["step_s_median"])
        print(f"[{world.name}] 400-step concept: {out['concept_400']['concept_total_s']:.0f} s", flush=True)

    def flops() -> None:
        out["flops_per_step"] = {m: count_step_flops(world, bundle, concept_set, m) for m in ("none", "hard", "store")}

    checkpointed = [m for m in CHECKPOINTED if m in modes] or ["none", "hard"]
    for _ in range(rounds):
        for mode in (m for m in modes if m != "store"):
            guarded(mode, lambda: train_mode(mode))
        if "checkpointing" in extras:  # optional activation checkpointing (diffusers' own)
            for mode in checkpointed:
                guarded(f"{mode}+ckpt", lambda: train_mode(mode, checkpointing=True))
        if "store" in modes:  # the largest last, so whatever it leaves behind touches no other mode
            guarded("store", lambda: train_mode("store"))
    if "sampling" in extras:
        guarded("sampling", sampling)
    if "concept" in extras:
        guarded("concept_400", concept)
    if "flops" in extras:
        guarded("flops", flops)
    return out


RATIOS = (
    ("hard", "none"),
    ("soft", "none"),
    ("store", "hard"),
    ("store", "none"),
    ("hard", "hard-coarse"),
    ("hard+ckpt", "none+ckpt"),
    ("hard+ckpt", "hard-coarse+ckpt"),
    ("none+ckpt", "none"),
    ("hard+ckpt", "hard"),
)


def _ratios(modes: dict) -> dict:
    ratios = {}
    for a, b in RATIOS:
        if a in modes and b in modes:
            ratios[f"{a}/{b}"] = {
                "step_time": modes[a]["step_s_median"] / modes[b]["step_s_median"],
                "step_cpu_time": modes[a]["step_cpu_s_median"] / modes[b]["step_cpu_s_median"],
                "peak_memory": modes[a]["peak_bytes"] / modes[b]["peak_bytes"],
                "step_extra_memory": modes[a]["step_extra_bytes"] / max(1, modes[b]["step_extra_bytes"]),
            }
    return ratios


def run_world(world: World, modes: list[str], extras: list[str], rounds: int, partial: Path | None = None) -> dict:
    """CPU: one fresh subprocess per (mode, round) so each RSS peak is that mode's alone;
    CUDA: one process (the allocator's peak resets per mode), saving model builds."""
    result: dict = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {**world.__dict__, "precision": world.precision},
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
    }
    if world.device == "cuda" or world.one_process:
        result.update(run_worker(world, modes, extras, partial=partial, rounds=rounds))
    else:
        per_mode: dict[str, list[dict]] = {m: [] for m in modes}
        for r in range(rounds):  # rounds interleave the modes, so drifting load hits all alike
            for mode in modes:
                run = _subprocess(world, [mode], [])
                if mode in run["modes"]:
                    per_mode[mode].append(run["modes"][mode])
                else:
                    result[f"{mode}_error"] = run.get(f"{mode}_error", "no result")
        result["modes"] = {m: _merge_rounds(runs) for m, runs in per_mode.items() if runs}
        if extras:
            extra = _subprocess(world, [], extras)
            result["modes"].update(extra.pop("modes"))  # e.g. the +ckpt variants
            result.update({k: v for k, v in extra.items() if k not in ("build_s", "threads")})
    for mode, flops in result.get("flops_per_step", {}).items():
        if mode in result["modes"]:
            result["modes"][mode]["tflops_achieved"] = flops / result["modes"][mode]["step_s_median"] / 1e12
    result["ratios"] = _ratios(result["modes"])
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    return result


def _subprocess(world: World, modes: list[str], extras: list[str]) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        world.name,
        "--modes",
        ",".join(modes) or "-",
        "--extras",
        ",".join(extras) or "-",
        "--threads",
        str(torch.get_num_threads()),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    sys.stderr.write(proc.stderr[-2000:] if proc.returncode else "")
    if proc.returncode:
        raise RuntimeError(f"worker {world.name} {modes} {extras} failed ({proc.returncode})")
    print(proc.stdout.strip().rsplit("\n", 1)[0], flush=True)
    return json.loads(proc.stdout.strip().rsplit("\n", 1)[-1])


def _merge_rounds(results: list[dict]) -> dict:
    """Several rounds of one mode's measurement: the round with the median step time, its
    peak replaced by the median peak, and every round's step time for the record."""
    if len(results) == 1:
        return results[0]
    results = sorted(results, key=lambda r: r["step_s_median"])
    chosen = dict(results[len(results) // 2])
    chosen["rounds_step_s_median"] = [r["step_s_median"] for r in results]
    chosen["rounds_step_cpu_s_median"] = [r["step_cpu_s_median"] for r in results]
    chosen["peak_bytes"] = int(statistics.median(r["peak_bytes"] for r in results))
    chosen["step_extra_bytes"] = int(statistics.median(r["step_extra_bytes"] for r in results))
    chosen["resident_between_steps_bytes"] = int(statistics.median(r["resident_between_steps_bytes"] for r in results))
    return chosen


# ----------------------------------------------------------------------------- report
def _gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def markdown(results: dict) -> str:
    lines = []
    for name, res in results.items():
        m = res["machine"]
        where = m.get("gpu") or f"{m['platform']}, {m['cpu_threads']} torch threads"
        lines += [
            f"## {name}",
            "",
            f"{res['date']} on {m['host']} ({where}); torch {m['torch']}, "
            f"diffusers {m.get('diffusers', '?')}; load average {m['loadavg'][0]:.1f} at start.",
            "",
        ]
        s = res["settings"]
        model = s["model"] + (
            f" (transformer depth {s['transformer_depth']} at 1280 channels)" if s.get("transformer_depth") else ""
        )
        precision = f", {s['precision']}" if "precision" in s else ""
        lines += [
            f"Model {model}, {s['resolution']} px{precision}, batch {s['instance_batch']} instance + {s['prior_batch']} prior, "
            f"median of {s['steps']} warm steps after {s['warmup']}.",
            "",
        ]
        lines += [
            "| mode | step s (median) | steps/s | CPU s/step | peak GiB | resident GiB | step extra GiB | TFLOP/s |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for mode, r in res["modes"].items():
            tf = f"{r['tflops_achieved']:.1f}" if "tflops_achieved" in r else ""
            lines.append(
                f"| {mode} | {r['step_s_median']:.4f} | {r['steps_per_s']:.2f} | {r['step_cpu_s_median']:.4f} | {_gib(r['peak_bytes'])} | "
                f"{_gib(r['resident_between_steps_bytes'])} | {_gib(r['step_extra_bytes'])} | {tf} |"
            )
        lines += [
            "",
            "| ratio | step time | step CPU time | peak memory | step extra memory |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for key, r in res["ratios"].items():
            lines.append(
                f"| {key} | {r['step_time']:.3f} | {r['step_cpu_time']:.3f} | {r['peak_memory']:.3f} | {r['step_extra_memory']:.3f} |"
            )
        for key in sorted(k for k in res if k.endswith("_error")):
            lines += ["", f"{key[: -len('_error')]} failed: `{res[key]}`"]
        if "flops_per_step" in res:
            lines += [
                "",
                "FLOPs per step: " + ", ".join(f"{k} {v / 1e12:.2f} TFLOP" for k, v in res["flops_per_step"].items()),
            ]
        if "sampling" in res:
            sm = res["sampling"]
            lines += [
                "",
                f"Sampling ({sm['steps']} DDIM steps, CFG, batch {sm['batch']}): plain {sm['plain_s']:.3f} s, "
                f"with token-map capture {sm['capture_s']:.3f} s "
                f"(x{sm['capture_over_plain']:.3f})"
                + (
                    f"; CPU time {sm['plain_cpu_s']:.3f} s vs {sm['capture_cpu_s']:.3f} s (x{sm['capture_over_plain_cpu']:.3f})"
                    if "plain_cpu_s" in sm
                    else ""
                )
                + ".",
            ]
        if "concept_400" in res:
            c = res["concept_400"]
            lines += [
                "",
                f"Full concept: {c['prior_images']} prior images x {c['prior_sampling_steps']} DDIM steps "
                f"{c['prior_extrapolated_s']:.0f} s ({c['note']}) + 400 steps {c['train_400_steps_s']:.0f} s "
                f"= **{c['concept_total_s']:.0f} s**.",
            ]
        lines.append("")
    return "\n".join(lines)


START, END = "<!-- bench:start (generated by scripts/bench_performance.py) -->", "<!-- bench:end -->"


def write_markdown(path: Path, results: dict) -> None:
    """Regenerate the tables between the markers of ``path``, keeping the prose around them."""
    tables = f"{START}\n\n{markdown(results)}\n{END}"
    text = path.read_text() if path.is_file() else ""
    if START in text and END in text:
        text = text[: text.index(START)] + tables + text[text.index(END) + len(END) :]
    else:
        text = "# Performance measurements\n\n" + tables + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--configs", nargs="+", default=["tinyworld-cpu", "sd15-256-cpu"], choices=sorted(WORLDS) + sorted(TEST_WORLDS)
    )
    parser.add_argument("--modes", default=None, help=f"comma list of {','.join(MODES)} (default per config)")
    parser.add_argument(
        "--extras", default=None, help="comma list of sampling,flops,concept,checkpointing (default per config)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="repeat the training modes this often, interleaved (a subprocess per mode and round on "
        "CPU unless the config runs in one process); default 3 for the tiny CPU configs, else 1",
    )
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "performance.json")
    parser.add_argument("--markdown", type=Path, default=None, help="default: the --json path with .md")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU: torch threads (default 1: on a shared CPU, spinning OpenMP threads make "
        "multi-threaded timings meaningless; the tests run single-threaded for the same reason)",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    worlds = {**WORLDS, **TEST_WORLDS}
    if args.worker:
        modes = [m for m in args.modes.split(",") if m and m != "-"]
        extras = [e for e in (args.extras or "").split(",") if e and e != "-"]
        print(json.dumps(run_worker(worlds[args.worker], modes, extras)))
        return
    results = json.loads(args.json.read_text()) if args.json.is_file() else {}
    for name in args.configs:
        world = worlds[name]
        modes = [m for m in args.modes.split(",") if m] if args.modes else list(world.modes)
        extras = (
            args.extras.split(",")
            if args.extras
            else (["sampling", "flops", "concept", "checkpointing"] if world.device == "cuda" else ["sampling"])
        )
        rounds = args.rounds or (3 if world.model in ("tinyworld", "tiny") and world.device == "cpu" else 1)
        partial = args.json.with_suffix(f".{name}.partial.json")  # survives a crash or a time limit
        partial.parent.mkdir(parents=True, exist_ok=True)
        results[name] = run_world(world, modes, [e for e in extras if e and e != "-"], rounds, partial=partial)
        partial.unlink(missing_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
        write_markdown(args.markdown or args.json.with_suffix(".md"), results)
        print(markdown({name: results[name]}), flush=True)


if __name__ == "__main__":
    main()
