"""Train every TinyWorld network from scratch: VAE, CLIP (text + vision), UNet, judge.

One plain function per network, each a short loop readable top to bottom, called in order by
``build.build_all`` (scripts/build_tinyworld.py is its command line). Everything is seeded; a
``Preset`` fixes data sizes and step counts so a rebuild reproduces the shipped weights.

Data: pretraining scenes never contain held-out kinds (VAE, CLIP and UNet see only those);
the judge sees the whole world, held-out kinds included.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from textloc_core.tinyworld import model_configs as mc
from textloc_core.tinyworld.judge import Judge, JudgeNet, scene_targets
from textloc_core.tinyworld.render import render_scene
from textloc_core.tinyworld.world import sample_any_scene, sample_pretraining_scene

from .build_state import BuildState

PHASES = ("vae", "clip", "unet", "judge")
"""The networks a rebuild trains, in order."""


@dataclass(frozen=True)
class Preset:
    """Sizes and step counts of one rebuild."""

    n_pretrain: int
    n_judge: int
    vae_steps: int
    clip_steps: int
    unet_steps: int
    judge_steps: int
    vae_batch: int = 128
    clip_batch: int = 512
    unet_batch: int = 256
    judge_batch: int = 256
    unet_lr: float = 4e-4
    schedule_steps: tuple[int, int, int, int] | None = None
    """(vae, clip, unet, judge) lengths the lr schedules are laid out for; None: the step counts."""

    @classmethod
    def of(cls, scenes: tuple[int, int], steps: tuple[int, ...], batches: tuple[int, ...] | None = None, **rest):
        """A preset from its (pretraining, judge) scene counts and the step counts and batch sizes
        of the phases in ``PHASES`` order (batches None: the defaults); ``rest`` sets the others."""
        fields = {f"{phase}_steps": n for phase, n in zip(PHASES, steps, strict=True)}
        if batches is not None:
            fields.update({f"{phase}_batch": n for phase, n in zip(PHASES, batches, strict=True)})
        return cls(n_pretrain=scenes[0], n_judge=scenes[1], **fields, **rest)

    def schedule_length(self, phase: str) -> int:
        if self.schedule_steps is None:
            return getattr(self, f"{phase}_steps")
        return self.schedule_steps[PHASES.index(phase)]


PRESETS = {
    # the shipped weights: about 8 minutes on one H100. Step counts are those the shipped build
    # ran (it was started with 3000/2000/3000/20000 under --budget vae=60 clip=35 judge=80
    # total=470 and stopped at these; the lr schedules were laid out for the larger counts)
    "gpu": Preset.of(
        (80_000, 40_000),
        steps=(1_121, 553, 3_088, 1_137),
        batches=(256, 1024, 1024, 512),
        unet_lr=5e-4,
        schedule_steps=(3_000, 2_000, 20_000, 3_000),
    ),
    # the same data and batches with the step counts the schedules were laid out for (better
    # quality; about 35 minutes on one H100, not yet run)
    "gpu-long": Preset.of(
        (80_000, 40_000), steps=(3_000, 2_000, 20_000, 3_000), batches=(256, 1024, 1024, 512), unet_lr=5e-4
    ),
    # the same recipe cut to fit 2 CPU cores: measured 40 min end to end (docs/tinyworld.md). It
    # checks the recipe runs without a GPU; its UNet sees under 1% of the gpu preset's samples, and the
    # samples show it (prompted object found 3% of the time)
    "cpu": Preset.of((20_000, 10_000), steps=(600, 500, 800, 400), batches=(32, 128, 32, 64)),
    # a minute on a GPU: measures each phase's speed at the gpu preset's batch sizes
    "probe": Preset.of((8_000, 4_000), steps=(300, 300, 1_001, 300)),
    # seconds: checks the whole path runs (tests, smoke runs)
    "quick": Preset.of((256, 128), steps=(3, 3, 3, 3), batches=(8, 16, 8, 8)),
}


def warmup_cosine(opt, total: int, warmup_frac: float = 0.05, floor: float = 0.05):
    """Linear warmup then cosine decay to ``floor`` times the base learning rate."""
    warmup = max(1, int(total * warmup_frac))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


class Deadline:
    """Stops a training loop early once a wall-clock time passes (None: never), or once a loop
    reaches step ``at_step`` (a deterministic stop: split a long UNet phase over several runs).

    The rebuild is defined by step counts; a deadline only guards a lent GPU's time limit, and
    the steps actually run are recorded in tinyworld_build.json so they can be reproduced.
    """

    def __init__(self, seconds: float | None, at_step: int | None = None):
        self.at = None if seconds is None else time.time() + seconds
        self.at_step = at_step
        self.stopped_at: int | None = None

    def passed(self, step: int = 0) -> bool:
        return (self.at is not None and time.time() > self.at) or (self.at_step is not None and step >= self.at_step)

    def stops(self, step: int, phase: str) -> bool:
        """Whether ``phase``'s loop must stop before ``step``; if so, logs it and records the step."""
        if not self.passed(step):
            return False
        log(f"deadline: stopping {phase} after {step} steps")
        self.stopped_at = step
        return True


NO_DEADLINE = Deadline(None)

# 0.3 rather than 0.5: occluded objects get lower scores; chosen on renders the tests never see
JUDGE_THRESHOLD = 0.3


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------- data
def _render_chunk(args: tuple[int, int, int, bool]) -> tuple[np.ndarray, list, list]:
    seed, start, count, any_kind = args
    images, specs, orders = [], [], []
    for i in range(start, start + count):
        rng = np.random.default_rng([seed, i])
        spec = sample_any_scene(rng) if any_kind else sample_pretraining_scene(rng)
        images.append((render_scene(spec).image * 255).round().astype(np.uint8))
        specs.append(spec)
        orders.append([tuple(int(j) for j in rng.permutation(len(spec.objects))) for _ in range(2)])
    return np.stack(images), specs, orders


def render_dataset(n: int, seed: int, any_kind: bool, workers: int | None = None):
    """``n`` scenes (scene i seeded by (seed, i), so the result does not depend on ``workers``):
    uint8 images (n, 64, 64, 3), specs, and two caption orders per scene."""
    workers = workers or max(1, min(16, (os.cpu_count() or 1)))
    chunk = max(1, math.ceil(n / (workers * 4)))
    jobs = [(seed, s, min(chunk, n - s), any_kind) for s in range(0, n, chunk)]
    if workers == 1:
        parts = [_render_chunk(j) for j in jobs]
    else:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_render_chunk, jobs))
    images = np.concatenate([p[0] for p in parts])
    specs = [s for p in parts for s in p[1]]
    orders = [o for p in parts for o in p[2]]
    return images, specs, orders


def to_float(images_u8: np.ndarray | torch.Tensor, device) -> torch.Tensor:
    x = torch.as_tensor(images_u8).to(device)
    return x.permute(0, 3, 1, 2).float() / 255.0


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(
        captions, padding="max_length", max_length=mc.MAX_TOKENS, truncation=True, return_tensors="pt"
    ).input_ids


# ---------------------------------------------------------------------------------- VAE
def train_vae(images_u8: np.ndarray, preset: Preset, device, seed: int, deadline: Deadline = NO_DEADLINE):
    """KL autoencoder: L1 + MSE reconstruction, SD's tiny KL weight."""
    torch.manual_seed(seed)
    vae = mc.build_vae().to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = warmup_cosine(opt, preset.schedule_length("vae"))
    data = torch.as_tensor(images_u8).to(device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for step in range(preset.vae_steps):
        if deadline.stops(step, "vae"):
            break
        idx = torch.randint(len(data), (preset.vae_batch,), generator=gen)
        x = to_float(data[idx.to(device)], device) * 2 - 1
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            posterior = vae.encode(x).latent_dist
            z = posterior.sample()
            recon = vae.decode(z).sample.float()
        kl = posterior.kl().mean() / x[0].numel()
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 500 == 0 or step == preset.vae_steps - 1:
            log(f"vae step {step} loss {loss.item():.4f} l1 {F.l1_loss(recon, x).item():.4f}")
    return vae.eval()


@torch.no_grad()
def rescale_vae_latents(vae, images_u8: np.ndarray, device, n: int = 4096) -> float:
    """Rescale the VAE so that latent means times SD's 0.18215 have unit standard deviation.

    Folds a factor s into quant_conv (mean rows times s, log-variance rows plus 2 log s) and
    1/s into post_quant_conv's input, which leaves reconstructions unchanged; ComfyUI's stock
    SD15 latent format (scale 0.18215) then suits these latents. Returns s.
    """
    x = to_float(images_u8[:n], device) * 2 - 1
    mean = torch.cat([vae.encode(x[i : i + 512]).latent_dist.mean for i in range(0, len(x), 512)])
    s = float(1.0 / (mean.std() * mc.SD_SCALING_FACTOR))
    c = mc.LATENT_CHANNELS
    qc, pqc = vae.quant_conv, vae.post_quant_conv
    qc.weight[:c] *= s
    qc.bias[:c] *= s
    qc.bias[c:] += 2 * math.log(s)
    pqc.weight /= s
    return s


# ---------------------------------------------------------------------------------- CLIP
def train_clip(
    images_u8: np.ndarray,
    captions: list[list[str]],
    tokenizer,
    preset: Preset,
    device,
    seed: int,
    deadline: Deadline = NO_DEADLINE,
):
    """Contrastive text + vision towers (CLIP loss with learned temperature)."""
    torch.manual_seed(seed)
    text = mc.build_text_encoder().to(device).train()
    vision = mc.build_vision_encoder().to(device).train()
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07), device=device))
    params = list(text.parameters()) + list(vision.parameters()) + [logit_scale]
    opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.1)
    sched = warmup_cosine(opt, preset.schedule_length("clip"), 0.1)
    data = torch.as_tensor(images_u8).to(device)
    tokens = torch.stack([tokenize(tokenizer, [c[k] for c in captions]) for k in range(2)], 1).to(device)
    gen = torch.Generator(device="cpu").manual_seed(seed + 1)
    for step in range(preset.clip_steps):
        if deadline.stops(step, "clip"):
            break
        idx = torch.randint(len(data), (preset.clip_batch,), generator=gen).to(device)
        which = torch.randint(2, (preset.clip_batch,), generator=gen).to(device)
        x = to_float(data[idx], device)
        ids = tokens[idx, which]
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            t = F.normalize(text(input_ids=ids).text_embeds.float(), dim=-1)
            v = F.normalize(vision(pixel_values=clip_pixels(x)).image_embeds.float(), dim=-1)
        logits = logit_scale.exp().clamp(max=100) * v @ t.T
        # identical captions in a batch are true positives for each other
        same = (ids[:, None, :] == ids[None, :, :]).all(-1).float()
        target = same / same.sum(1, keepdim=True)
        loss = (
            torch.sum(-target * logits.log_softmax(1), 1).mean()
            + torch.sum(-target * logits.T.log_softmax(1), 1).mean()
        ) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 500 == 0 or step == preset.clip_steps - 1:
            acc = (logits.argmax(1) == torch.arange(len(x), device=device)).float().mean().item()
            log(f"clip step {step} loss {loss.item():.4f} i2t top1 {acc:.3f}")
    return text.eval(), vision.eval()


def clip_pixels(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> the CLIP vision tower's input (OpenAI CLIP normalisation, 64x64)."""
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073], device=images.device).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711], device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


# ---------------------------------------------------------------------------------- UNet
@torch.no_grad()
def encode_all(vae, images_u8: np.ndarray, device, batch: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and standard deviations of every image (scaled for the UNet)."""
    means, stds = [], []
    for i in range(0, len(images_u8), batch):
        d = vae.encode(to_float(images_u8[i : i + batch], device) * 2 - 1).latent_dist
        means.append(d.mean * mc.SD_SCALING_FACTOR)
        stds.append(d.std * mc.SD_SCALING_FACTOR)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def encode_text(text_encoder, tokens: torch.Tensor, batch: int = 2048) -> torch.Tensor:
    return torch.cat(
        [text_encoder(input_ids=tokens[i : i + batch]).last_hidden_state.half() for i in range(0, len(tokens), batch)]
    )


def train_unet(
    latent_mean,
    latent_std,
    text_states,
    empty_state,
    preset: Preset,
    device,
    seed: int,
    deadline: Deadline = NO_DEADLINE,
    state: BuildState | None = None,
    checkpoint_every: int = 500,
):
    """Latent diffusion, epsilon prediction, SD's scaled-linear 1000-step schedule, 10% caption dropout.

    ``text_states``: (N, 2, 77, D) precomputed frozen text encoder states (two caption orders);
    ``empty_state``: (77, D) the state of the empty prompt (the unconditional branch of CFG).
    ``state``: where the training checkpoint is kept (every ``checkpoint_every`` steps and when
    the deadline stops the loop); training continues from it when one is there.
    Returns the EMA UNet.
    """
    import copy

    torch.manual_seed(seed)
    unet = mc.build_unet().to(device).train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    ema_params, unet_params = list(ema.parameters()), list(unet.parameters())
    scheduler = mc.build_scheduler()
    alphas = scheduler.alphas_cumprod.to(device)
    opt = torch.optim.AdamW(unet.parameters(), lr=preset.unet_lr, weight_decay=0.01)
    sched = warmup_cosine(opt, preset.schedule_length("unet"), 0.03, floor=0.1)
    gen = torch.Generator(device=device).manual_seed(seed + 2)
    n = len(latent_mean)
    first = 0
    saved = state.load_unet_checkpoint() if state is not None else None
    if saved is not None:
        unet.load_state_dict(saved["unet"])
        ema.load_state_dict(saved["ema"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["lr_schedule"])
        gen.set_state(saved["generator"])
        first = int(saved["step"])
        log(f"unet: continuing from the checkpoint at step {first}")

    def keep(step: int) -> None:
        if state is not None:
            state.save_unet_checkpoint(
                {
                    "step": step,
                    "unet": unet.state_dict(),
                    "ema": ema.state_dict(),
                    "optimizer": opt.state_dict(),
                    "lr_schedule": sched.state_dict(),
                    "generator": gen.get_state(),
                }
            )

    t0 = time.time()
    for step in range(first, preset.unet_steps):
        if deadline.stops(step, "unet"):
            keep(step)
            break
        if step > first and step % checkpoint_every == 0:
            keep(step)
        idx = torch.randint(n, (preset.unet_batch,), generator=gen, device=device)
        which = torch.randint(2, (preset.unet_batch,), generator=gen, device=device)
        z0 = latent_mean[idx] + latent_std[idx] * torch.randn(latent_mean[idx].shape, generator=gen, device=device)
        ctx = text_states[idx, which].float()
        drop = torch.rand(preset.unet_batch, generator=gen, device=device) < 0.1
        ctx = torch.where(drop[:, None, None], empty_state.float()[None], ctx)
        t = torch.randint(0, 1000, (preset.unet_batch,), generator=gen, device=device)
        eps = torch.randn(z0.shape, generator=gen, device=device)
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            pred = unet(zt, t, encoder_hidden_states=ctx).sample.float()
        loss = F.mse_loss(pred, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, unet_params, 1 - decay)
        if step % 1000 == 0 or step == preset.unet_steps - 1:
            log(
                f"unet step {step} loss {loss.item():.4f} ({(time.time() - t0) / (step + 1 - first) * 1000:.1f} ms/step)"
            )
    else:
        keep(preset.unet_steps)
    return ema


# ---------------------------------------------------------------------------------- judge
def train_judge(
    images_u8: np.ndarray, specs, preset: Preset, device, seed: int, deadline: Deadline = NO_DEADLINE
) -> Judge:
    """Multi-label CNN on whole-world renders; blur/noise augmentation so model samples (a bit
    soft after the VAE) are judged like renders."""
    torch.manual_seed(seed)
    net = JudgeNet().to(device).train()
    targets = [scene_targets(s) for s in specs]
    cs = torch.as_tensor(np.stack([t[0] for t in targets])).to(device)
    ts = torch.as_tensor(np.stack([t[1] for t in targets])).to(device)
    bg = torch.as_tensor(np.array([t[2] for t in targets])).to(device)
    data = torch.as_tensor(images_u8).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = warmup_cosine(opt, preset.schedule_length("judge"), 0.1)
    gen = torch.Generator(device="cpu").manual_seed(seed + 3)
    for step in range(preset.judge_steps):
        if deadline.stops(step, "judge"):
            break
        idx = torch.randint(len(data), (preset.judge_batch,), generator=gen).to(device)
        x = augment(to_float(data[idx], device), gen)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            l_cs, l_ts, l_bg = net(x)
        loss = (
            F.binary_cross_entropy_with_logits(l_cs.float(), cs[idx]) * 10
            + F.binary_cross_entropy_with_logits(l_ts.float(), ts[idx]) * 10
            + F.cross_entropy(l_bg.float(), bg[idx])
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 500 == 0 or step == preset.judge_steps - 1:
            log(f"judge step {step} loss {loss.item():.4f}")
    return Judge(net.eval(), threshold=JUDGE_THRESHOLD)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random blur (half the batch), small noise and brightness jitter."""
    b = len(x)
    blur = torch.rand(b, generator=gen) < 0.5
    if blur.any():
        k = torch.tensor([1.0, 2.0, 1.0], device=x.device)
        k = (k[:, None] * k[None, :]) / 16
        soft = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k.expand(3, 1, 3, 3), groups=3)
        x = torch.where(blur.to(x.device)[:, None, None, None], soft, x)
    noise = torch.randn(x.shape, generator=gen).to(x.device) * 0.03
    gain = (1 + 0.1 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)).to(x.device)
    return (x * gain + noise).clamp(0, 1)


@torch.no_grad()
def judge_accuracy(judge: Judge, images_u8: np.ndarray, specs, device) -> dict[str, float]:
    """Exact-set accuracies on renders: all (colour, shape) objects right, all (texture, shape)
    right, background right, and per-object recall."""
    verdicts = judge(to_float(images_u8, device))
    obj_ok = tex_ok = bg_ok = found = total = 0
    for v, spec in zip(verdicts, specs):
        want = {(o.kind.colour, o.kind.shape) for o in spec.objects}
        want_t = {(o.kind.texture, o.kind.shape) for o in spec.objects}
        obj_ok += v.objects == want
        tex_ok += v.textures == want_t
        bg_ok += v.background == spec.background
        found += len(v.objects & want)
        total += len(want)
    n = len(specs)
    return {
        "objects_exact": obj_ok / n,
        "textures_exact": tex_ok / n,
        "background": bg_ok / n,
        "object_recall": found / total,
    }
