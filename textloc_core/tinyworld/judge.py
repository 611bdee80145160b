"""The TinyWorld judge: a small CNN that says what an image shows, independent of the model.

It answers, for a 64x64 image: which (colour, shape) objects are present, which (texture,
shape) combinations are present, and which background. Experiments use it to score fidelity
(is the prompted object there?) and leakage (did the other concept's look bleed in?). It is
trained on renders of the whole world, held-out kinds included, never on model samples.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .world import BACKGROUNDS, COLOURS, SHAPES, TEXTURES, ObjectKind, SceneSpec

COLOUR_NAMES = tuple(COLOURS)
N_COLOUR_SHAPE = len(COLOUR_NAMES) * len(SHAPES)
N_TEXTURE_SHAPE = len(TEXTURES) * len(SHAPES)


def colour_shape_index(colour: str, shape: str) -> int:
    return COLOUR_NAMES.index(colour) * len(SHAPES) + SHAPES.index(shape)


def texture_shape_index(texture: str, shape: str) -> int:
    return TEXTURES.index(texture) * len(SHAPES) + SHAPES.index(shape)


def scene_targets(spec: SceneSpec) -> tuple[np.ndarray, np.ndarray, int]:
    """Multi-hot (colour, shape) and (texture, shape) vectors and the background index."""
    cs = np.zeros(N_COLOUR_SHAPE, np.float32)
    ts = np.zeros(N_TEXTURE_SHAPE, np.float32)
    for obj in spec.objects:
        cs[colour_shape_index(obj.kind.colour, obj.kind.shape)] = 1
        ts[texture_shape_index(obj.kind.texture, obj.kind.shape)] = 1
    return cs, ts, BACKGROUNDS.index(spec.background)


class JudgeNet(nn.Module):
    """Conv net, 64x64 -> three heads (colour-shape logits, texture-shape logits, background logits)."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.width = width

        def block(cin, cout):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.SiLU(),
                nn.Conv2d(cout, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.SiLU(),
            )

        w = width
        # keep full resolution for the first block: 3-pixel stripes and dots must survive
        self.features = nn.Sequential(
            block(3, w),
            nn.MaxPool2d(2),
            block(w, 2 * w),
            nn.MaxPool2d(2),
            block(2 * w, 4 * w),
            nn.MaxPool2d(2),
            block(4 * w, 4 * w),
        )
        self.head = nn.Linear(4 * w * 2, N_COLOUR_SHAPE + N_TEXTURE_SHAPE + len(BACKGROUNDS))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``images`` (B, 3, 64, 64) in [0, 1] -> (cs_logits, ts_logits, bg_logits)."""
        f = self.features(images * 2 - 1)
        pooled = torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1)
        out = self.head(pooled)
        return (
            out[:, :N_COLOUR_SHAPE],
            out[:, N_COLOUR_SHAPE : N_COLOUR_SHAPE + N_TEXTURE_SHAPE],
            out[:, -len(BACKGROUNDS) :],
        )


@dataclass
class Verdict:
    """What the judge sees in one image."""

    objects: set[tuple[str, str]]
    """(colour, shape) pairs present."""
    textures: set[tuple[str, str]]
    """(texture, shape) pairs present."""
    background: str
    object_probs: np.ndarray
    """(len(COLOURS) * len(SHAPES),) probabilities, index with colour_shape_index."""

    def has(self, kind: ObjectKind, check_texture: bool = False) -> bool:
        ok = (kind.colour, kind.shape) in self.objects
        if check_texture:
            ok = ok and (kind.texture, kind.shape) in self.textures
        return ok


class Judge:
    """A trained JudgeNet plus decoding of its outputs into Verdicts."""

    def __init__(self, net: JudgeNet, threshold: float = 0.5):
        self.net = net.eval()
        self.threshold = threshold

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 256) -> list[Verdict]:
        """``images`` (B, 3, 64, 64) float in [0, 1] (resized if another size)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"judge images must be (B, 3, H, W) RGB in [0, 1], got shape {tuple(images.shape)}")
        device = next(self.net.parameters()).device
        verdicts = []
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].float().to(device)
            if x.shape[-2:] != (64, 64):
                x = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", antialias=True)
            cs, ts, bg = self.net(x.clamp(0, 1))
            cs, ts = cs.sigmoid().cpu().numpy(), ts.sigmoid().cpu().numpy()
            bg = bg.argmax(1).cpu().numpy()
            for i in range(len(x)):
                objects = {
                    (COLOUR_NAMES[j // len(SHAPES)], SHAPES[j % len(SHAPES)])
                    for j in np.flatnonzero(cs[i] > self.threshold)
                }
                textures = {
                    (TEXTURES[j // len(SHAPES)], SHAPES[j % len(SHAPES)])
                    for j in np.flatnonzero(ts[i] > self.threshold)
                }
                verdicts.append(Verdict(objects, textures, BACKGROUNDS[bg[i]], cs[i]))
        return verdicts

    def save(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {
            k: v.detach().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous().cpu()
            for k, v in self.net.state_dict().items()
        }
        save_file(state, str(directory / "judge.safetensors"))
        (directory / "config.json").write_text(json.dumps({"width": self.net.width, "threshold": self.threshold}))

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> Judge:
        from safetensors.torch import load_file

        directory = Path(directory)
        path = directory / "judge.safetensors"
        if not path.exists():
            raise FileNotFoundError(f"no judge weights at {path}: run scripts/build_tinyworld.py to train them")
        config = json.loads((directory / "config.json").read_text())
        net = JudgeNet(config["width"])
        state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
        net.load_state_dict(state)
        return cls(net.to(device), config["threshold"])
