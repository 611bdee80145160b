"""What a TinyWorld rebuild keeps on disk so that an interrupted build continues instead of restarting.

A GPU is lent for at most 10 minutes a call here, and the longer presets run 35 minutes; a laptop
build may be killed. ``BuildState`` keeps, in one folder, each finished phase's weights (fp32,
so a resumed build continues from exactly the same numbers) and the UNet's last training
checkpoint (weights, EMA, optimizer, lr schedule, random generator, step). ``build_all`` asks
it what is done, skips that, and ``train_unet`` continues from the checkpoint: on CPU a resumed
build gives bit-identical weights to an uninterrupted one.

Files are written to a temporary name and renamed, so a kill mid-write leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from textloc_core.data.safe_io import atomic_write, atomic_write_text

IDENTITY_FILE = "state.json"


def _load(path: Path):
    """torch.load of a state file, with an error that says what to do when it is damaged."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated or foreign file: any unpickling error means the same
        raise ValueError(
            f"--resume: the build state file {path} cannot be read ({type(error).__name__}: {error}); "
            "leave out --resume to start the build over"
        ) from error


class BuildState:
    """Finished phases and the UNet checkpoint of one rebuild (one preset, one seed)."""

    def __init__(self, directory: str | Path, identity: dict, resume: bool):
        """``identity``: what makes two builds the same build (preset values, seed); a
        resume from a folder written by another build is refused. Without ``resume`` the
        folder is emptied: the build starts over."""
        self.dir = Path(directory)
        if resume and (self.dir / IDENTITY_FILE).is_file():
            try:
                saved = json.loads((self.dir / IDENTITY_FILE).read_text())
            except ValueError as error:
                raise ValueError(
                    f"--resume: {self.dir / IDENTITY_FILE} is damaged ({error}); leave out --resume to start the "
                    "build over"
                ) from error
            if saved.get("identity") != identity:
                raise ValueError(
                    f"--resume: the build state in {self.dir} belongs to another build "
                    f"({_describe(saved.get('identity'))}, this one is {_describe(identity)}); rerun with the same "
                    "--preset and --seed, or leave out --resume to start over"
                )
            self.record = saved
        else:
            if self.dir.exists():
                shutil.rmtree(self.dir)
            self.dir.mkdir(parents=True)
            self.record = {"identity": identity, "phases": {}}
            self._write_record()

    # -- finished phases
    def done(self, phase: str) -> bool:
        return phase in self.record["phases"]

    def phase_meta(self, phase: str) -> dict:
        return self.record["phases"][phase]

    def save_phase(self, phase: str, tensors: dict[str, dict[str, torch.Tensor]], meta: dict) -> None:
        """Keep a finished phase: named state dicts (fp32 copies) and its log entries."""
        state = {name: {k: v.detach().cpu().clone() for k, v in sd.items()} for name, sd in tensors.items()}
        atomic_write(self.dir / f"{phase}.pt", lambda handle: torch.save(state, handle))
        self.record["phases"][phase] = meta
        self._write_record()

    def load_phase(self, phase: str) -> dict[str, dict[str, torch.Tensor]]:
        return _load(self.dir / f"{phase}.pt")

    # -- the UNet's training checkpoint
    @property
    def unet_checkpoint_path(self) -> Path:
        return self.dir / "unet_training.pt"

    def save_unet_checkpoint(self, checkpoint: dict) -> None:
        atomic_write(self.unet_checkpoint_path, lambda handle: torch.save(checkpoint, handle))

    def load_unet_checkpoint(self) -> dict | None:
        if not self.unet_checkpoint_path.is_file():
            return None
        return _load(self.unet_checkpoint_path)

    def _write_record(self) -> None:
        atomic_write_text(self.dir / IDENTITY_FILE, json.dumps(self.record, indent=2))


def _describe(identity: dict | None) -> str:
    if not identity:
        return "unknown build"
    return f"preset {identity.get('preset')!r}, seed {identity.get('seed')}"
