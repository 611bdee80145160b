"""TinyWorld: a tiny, really trained text-to-image world with exact masks.

The pack's embedded default: procedurally rendered 64x64 scenes (world.py, render.py), an
SD1-shaped latent diffusion model trained on them from scratch (model_configs.py,
tinyworld_build/, outside the core; weights shipped under weights/), a CLIP text+vision pair for metrics and an
independent judge (judge.py) that says what an image shows.

    from textloc_core import tinyworld
    pipe = tinyworld.load_pipeline("cpu")            # diffusers StableDiffusionPipeline
    image = pipe("a red star on grass", num_inference_steps=25).images[0]
    verdict = tinyworld.load_judge()(images)          # what is in (B, 3, 64, 64) images
    concept_set = tinyworld.personalization_set("dotstar", seed=0)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.concepts import Concept, ConceptImage, ConceptSet
from .render import RenderedScene
from .render import render_scene as _render_spec
from .world import (
    BACKGROUNDS,
    COLOURS,
    HELD_OUT,
    SHAPES,
    TEXTURES,
    ObjectKind,
    SceneSpec,
    held_out_concept,
    personalization_specs,
    place_objects,
)

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "HELD_OUT",
    "SHAPES",
    "TEXTURES",
    "ObjectKind",
    "SceneSpec",
    "RenderedScene",
    "weights_dir",
    "shipped_adapters_dir",
    "load_pipeline",
    "load_judge",
    "load_clip",
    "render_scene",
    "make_scene",
    "personalization_set",
    "personalization_prompts",
    "concept_names",
]


def weights_dir() -> Path:
    """The shipped TinyWorld weights (a diffusers StableDiffusionPipeline folder)."""
    return Path(__file__).resolve().parent / "weights"


def shipped_adapters_dir() -> Path:
    """Adapters trained on the shipped weights and shipped with the pack (adapters/README.md);
    nodes/paths.py lists them in ComfyUI's ``textloc`` model folder."""
    return Path(__file__).resolve().parent / "adapters"


def _require_weights(sub: str, root: str | Path | None = None) -> Path:
    path = Path(root or weights_dir()) / sub
    if not path.exists():
        raise FileNotFoundError(
            f"TinyWorld weights missing at {path}: rebuild them with `python scripts/build_tinyworld.py`"
        )
    return path


def load_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, path: str | Path | None = None
):
    """The shipped model (or the one at ``path``) as a diffusers StableDiffusionPipeline
    (offline, no safety checker)."""
    from diffusers import StableDiffusionPipeline

    root = _require_weights("model_index.json", path).parent
    pipe = StableDiffusionPipeline.from_pretrained(
        str(root),
        dtype=dtype,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        local_files_only=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_judge(device: str | torch.device = "cpu", path: str | Path | None = None):
    """The trained judge (see judge.Judge): call it on (B, 3, 64, 64) images in [0, 1]."""
    from .judge import Judge

    return Judge.load(_require_weights("judge", path), device)


def load_clip(device: str | torch.device = "cpu", path: str | Path | None = None):
    """(text tower with projection, vision tower with projection, tokenizer): TinyWorld's CLIP,
    used by metrics the way the paper uses CLIP ViT-L/14. Feed the vision tower
    ``tinyworld_build.train_world.clip_pixels(images)`` for [0, 1] images at 64x64."""
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModelWithProjection

    text_dir = _require_weights("text_encoder", path)
    text = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(text_dir))
    # text_encoder/ holds the plain CLIPTextModel the pipeline reads; the projection lives beside
    # the vision tower (see tinyworld_build.build.save_text_encoder)
    state = load_file(str(text_dir / "model.safetensors"))
    state.update(load_file(str(_require_weights("clip_vision", path) / "text_projection.safetensors")))
    text.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    missing = {k for k in text.state_dict()} - set(state)
    if any(not k.endswith("position_ids") for k in missing):
        raise ValueError(f"TinyWorld text encoder at {text_dir} lacks weights {sorted(missing)[:3]}: rebuild it")
    vision = CLIPVisionModelWithProjection.from_pretrained(_require_weights("clip_vision", path), dtype=torch.float32)
    tokenizer = CLIPTokenizer.from_pretrained(_require_weights("tokenizer", path))
    return text.float().to(device).eval(), vision.float().to(device).eval(), tokenizer


def make_scene(objects: list[ObjectKind | tuple[str, ...]], background: str = "grass", seed: int = 0) -> SceneSpec:
    """A scene with exactly ``objects`` (kinds or (shape, colour[, texture]) tuples), placed at
    seeded random positions, painted in the given order."""
    kinds = []
    for obj in objects:
        kind = obj if isinstance(obj, ObjectKind) else ObjectKind(*obj)
        kind.validate()
        kinds.append(kind)
    if not 1 <= len(kinds) <= 3:
        raise ValueError(f"a TinyWorld scene holds 1 to 3 objects, got {len(kinds)}")
    if background not in BACKGROUNDS:
        raise ValueError(f"unknown background {background!r}: choose one of {list(BACKGROUNDS)}")
    rng = np.random.default_rng([seed, 104729])
    return SceneSpec(background, place_objects(rng, kinds), int(rng.integers(2**31)))


def render_scene(spec: SceneSpec | None = None, **make_scene_args) -> RenderedScene:
    """Render a SceneSpec, or build one with ``make_scene(**make_scene_args)`` and render it."""
    if spec is None:
        spec = make_scene(**make_scene_args)
    return _render_spec(spec)


def concept_names() -> list[str]:
    """Names of the held-out concepts personalisation can teach."""
    return [c.name for c in HELD_OUT]


def personalization_set(name: str, seed: int = 0, n_images: int = 5) -> ConceptSet:
    """``n_images`` photos of held-out concept ``name`` standing next to the same companion
    object, with an exact mask for each of the two (like the paper's bucket + doll).

    Concepts: the new one (token "<name>", its class word) and the companion (token
    "<companion>", e.g. "<bluecircle>", class word its shape).
    """
    concept = held_out_concept(name)
    target = Concept(concept.name, f"<{concept.name}>", concept.class_word)
    companion = Concept(concept.companion_name, f"<{concept.companion_name}>", concept.companion.shape)
    images = []
    for i, spec in enumerate(personalization_specs(name, seed, n_images)):
        scene = _render_spec(spec)
        # objects are (companion, concept) in paint order, see world.personalization_specs
        masks = {
            companion.name: torch.from_numpy(scene.masks[0].astype(np.float32)),
            target.name: torch.from_numpy(scene.masks[1].astype(np.float32)),
        }
        images.append(
            ConceptImage(
                torch.from_numpy(scene.image).permute(2, 0, 1).contiguous(),
                masks,
                source=f"tinyworld:{name}/seed{seed}/{i} ({spec.background})",
            )
        )
    return ConceptSet([target, companion], images)


def personalization_prompts(name: str, seed: int = 0, n_images: int = 5) -> list[str]:
    """Training prompts matching ``personalization_set(name, seed)``, image by image:
    'a <bluecircle> circle and a <dotstar> star on grass'."""
    concept = held_out_concept(name)
    return [
        f"a <{concept.companion_name}> {concept.companion.shape} and a <{concept.name}> {concept.class_word}"
        f" on {spec.background}"
        for spec in personalization_specs(name, seed, n_images)
    ]
