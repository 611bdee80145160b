"""Rebuild TinyWorld: render the data, train every network in order (``train_world``), save
them in the diffusers layout that ``StableDiffusionPipeline.from_pretrained`` and ComfyUI read.

``build_all`` is what scripts/build_tinyworld.py runs; with a state folder (``build_state``)
finished phases are kept, so an interrupted rebuild resumes.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from textloc_core import tinyworld
from textloc_core.tinyworld import model_configs as mc
from textloc_core.tinyworld.judge import Judge, JudgeNet

from .build_state import BuildState
from .train_world import (
    JUDGE_THRESHOLD,
    PRESETS,
    Deadline,
    encode_all,
    encode_text,
    judge_accuracy,
    log,
    render_dataset,
    rescale_vae_latents,
    tokenize,
    train_clip,
    train_judge,
    train_unet,
    train_vae,
)


def save_text_encoder(text, out: Path) -> None:
    """The text tower as a plain CLIPTextModel (what StableDiffusionPipeline and ComfyUI read,
    HF key names ``text_model.*``) in text_encoder/; its projection, needed only by CLIP
    metrics, goes to clip_vision/text_projection.safetensors (see tinyworld.load_clip)."""
    from safetensors.torch import save_file

    (out / "text_encoder").mkdir(parents=True, exist_ok=True)
    (out / "clip_vision").mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous().cpu() for k, v in text.state_dict().items()}
    proj = state.pop("text_projection.weight")
    state = {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()}
    save_file(state, str(out / "text_encoder" / "model.safetensors"), metadata={"format": "pt"})
    save_file(
        {"text_projection.weight": proj},
        str(out / "clip_vision" / "text_projection.safetensors"),
        metadata={"format": "pt"},
    )
    config = text.config.to_dict()
    config.update(architectures=["CLIPTextModel"], dtype="float16")
    (out / "text_encoder" / "config.json").write_text(json.dumps(config, indent=2))


def save_all(out: Path, vae, text, vision, unet, judge: Judge | None, meta: dict) -> None:
    """diffusers layout: StableDiffusionPipeline.from_pretrained(out) loads it offline."""
    import shutil

    from diffusers import PNDMScheduler

    out.mkdir(parents=True, exist_ok=True)
    half = dict(safe_serialization=True)
    unet.to(torch.float16).save_pretrained(out / "unet", **half)
    vae.to(torch.float16).save_pretrained(out / "vae", **half)
    save_text_encoder(text, out)
    vision.to(torch.float16).save_pretrained(out / "clip_vision", **half)
    PNDMScheduler.from_config({**mc.SCHEDULER_CONFIG, "skip_prk_steps": True}).save_pretrained(out / "scheduler")
    if judge is not None:
        judge.save(out / "judge")
    tok_src = tinyworld.weights_dir() / "tokenizer"
    if (out / "tokenizer").resolve() != tok_src.resolve():
        shutil.copytree(tok_src, out / "tokenizer", dirs_exist_ok=True)
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    (out / "tinyworld_build.json").write_text(json.dumps(meta, indent=2))


def build_all(
    out: Path,
    preset_name: str,
    device: str,
    seed: int = 0,
    workers: int | None = None,
    skip_judge: bool = False,
    budgets: dict[str, float] | None = None,
    state_dir: Path | None = None,
    resume: bool = False,
    unet_stop_step: int | None = None,
) -> dict:
    """Render data, train all networks in order, save them under ``out``; returns the build log.

    ``budgets``: optional wall-clock seconds per phase ("vae", "clip", "judge") and "total"
    (the UNet, trained last, stops when the whole build has run that long).
    ``state_dir``: keep finished phases and the UNet checkpoint there (see build_state); with
    ``resume`` a build continues from what it finds. ``unet_stop_step``: stop the UNet at this
    step (weights are still saved; resume later to go on).
    """
    from transformers import CLIPTokenizer

    budgets = budgets or {}
    start = time.time()
    preset = PRESETS[preset_name]
    dev = torch.device(device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    tokenizer = CLIPTokenizer.from_pretrained(tinyworld.weights_dir() / "tokenizer")
    state = None
    if state_dir is not None:
        state = BuildState(
            state_dir,
            {"preset": preset_name, "preset_values": asdict(preset), "seed": seed, "skip_judge": skip_judge},
            resume,
        )
    meta: dict = {
        "preset": preset_name,
        "preset_values": asdict(preset),
        "seed": seed,
        "device": device,
        "torch": torch.__version__,
        "timings_s": {},
        "steps_run": {},
    }

    def phase(name: str) -> Deadline:
        if name != "unet":
            return Deadline(budgets.get(name))
        seconds = budgets["total"] - (time.time() - start) if "total" in budgets else None
        return Deadline(seconds, at_step=unet_stop_step)

    def done(name: str, t: float, deadline: Deadline, extra: dict | None = None) -> dict:
        meta["timings_s"][name] = round(time.time() - t, 1)
        meta["steps_run"][name] = (
            deadline.stopped_at if deadline.stopped_at is not None else getattr(preset, f"{name}_steps")
        )
        return {"seconds": meta["timings_s"][name], "steps": meta["steps_run"][name], **(extra or {})}

    def restored(name: str) -> dict[str, dict[str, torch.Tensor]] | None:
        """A finished phase's weights from the build state (and its log entries into meta)."""
        if state is None or not state.done(name):
            return None
        info = state.phase_meta(name)
        meta["timings_s"][name], meta["steps_run"][name] = info["seconds"], info["steps"]
        meta.update({k: v for k, v in info.items() if k not in ("seconds", "steps")})
        log(f"{name}: finished in an earlier run, loaded from {state.dir}")
        return state.load_phase(name)

    t = time.time()
    images, specs, orders = render_dataset(preset.n_pretrain, seed, any_kind=False, workers=workers)
    captions = [[s.caption(o) for o in orders_i] for s, orders_i in zip(specs, orders)]
    meta["timings_s"]["render"] = round(time.time() - t, 1)
    log(f"rendered {len(images)} pretraining scenes")

    if (kept := restored("vae")) is not None:
        vae = mc.build_vae().to(dev)
        vae.load_state_dict(kept["vae"])
        vae.eval()
    else:
        t, dl = time.time(), phase("vae")
        vae = train_vae(images, preset, dev, seed, dl)
        meta["vae_rescale"] = rescale_vae_latents(vae, images, dev)
        info = done("vae", t, dl, {"vae_rescale": meta["vae_rescale"]})
        if state is not None:
            state.save_phase("vae", {"vae": vae.state_dict()}, info)

    if (kept := restored("clip")) is not None:
        text, vision = mc.build_text_encoder().to(dev), mc.build_vision_encoder().to(dev)
        text.load_state_dict(kept["text"])
        vision.load_state_dict(kept["vision"])
        text.eval(), vision.eval()
    else:
        t, dl = time.time(), phase("clip")
        text, vision = train_clip(images, captions, tokenizer, preset, dev, seed, dl)
        info = done("clip", t, dl)
        if state is not None:
            state.save_phase("clip", {"text": text.state_dict(), "vision": vision.state_dict()}, info)

    judge = None
    if not skip_judge:
        if (kept := restored("judge")) is not None:
            net = JudgeNet().to(dev)
            net.load_state_dict(kept["judge"])
            judge = Judge(net.eval(), threshold=JUDGE_THRESHOLD)
        else:
            t, dl = time.time(), phase("judge")
            j_images, j_specs, _ = render_dataset(preset.n_judge, seed + 1000, any_kind=True, workers=workers)
            judge = train_judge(j_images, j_specs, preset, dev, seed, dl)
            fresh_images, fresh_specs, _ = render_dataset(
                2000 if preset_name != "quick" else 64, seed + 2000, any_kind=True, workers=workers
            )
            meta["judge_accuracy_fresh"] = judge_accuracy(judge, fresh_images, fresh_specs, dev)
            log(f"judge on fresh renders: {meta['judge_accuracy_fresh']}")
            info = done("judge", t, dl, {"judge_accuracy_fresh": meta["judge_accuracy_fresh"]})
            if state is not None:
                state.save_phase("judge", {"judge": judge.net.state_dict()}, info)

    t = time.time()
    mean, std = encode_all(vae, images, dev)
    tokens = torch.stack([tokenize(tokenizer, [c[k] for c in captions]) for k in range(2)], 1).to(dev)
    states = encode_text(text, tokens.flatten(0, 1)).view(len(images), 2, mc.MAX_TOKENS, -1)
    empty = encode_text(text, tokenize(tokenizer, [""]).to(dev))[0]
    dl = phase("unet")
    unet = train_unet(mean, std, states, empty, preset, dev, seed, dl, state=state)
    done("unet", t, dl)
    if dl.stopped_at is not None and state is not None:
        log(
            f"unet stopped at step {dl.stopped_at} of {preset.unet_steps}: weights are saved as they are; "
            f"continue with --resume (state in {state.dir})"
        )

    save_all(out, vae, text, vision, unet, judge, meta)
    log(f"saved to {out}: {meta['timings_s']} steps {meta['steps_run']}")
    return meta
