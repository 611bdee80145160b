"""Training checkpoints that survive a killed process, with no pickle anywhere.

Layout of a run's checkpoint folder::

    <dir>/step-000000120/tensors.safetensors   trainable tensors (K/V deltas, token embeddings)
                         state.safetensors     every tensor inside optimizer / extra state
                         state.json            everything else, with placeholders for those tensors
                         manifest.json         sha256 + size of the three files above (written last)

A checkpoint is assembled in a temporary sibling folder and renamed into place in one
``os.replace``; a process killed at any moment leaves either the complete step folder or a
temporary folder that readers ignore and the next save removes. ``load_latest_checkpoint``
walks steps newest first and returns the first one whose manifest and files verify, so a
damaged newest checkpoint falls back to the previous one.

Non-tensor state is stored as JSON with explicit tags for what JSON lacks (tuples, dicts with
non-string keys, numpy arrays, tensors), so ``torch.optim`` state dicts come back exactly,
bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data import safe_io
from .config import CONTINUED_KEYS, TrainConfig

FORMAT_NAME = "textloc.checkpoint"
FORMAT_VERSION = 1
STEP_PREFIX = "step-"
_FILES = ("tensors.safetensors", "state.safetensors", "state.json")
_MANIFEST = "manifest.json"


def step_dir_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:09d}"


def _step_of(name: str) -> int | None:
    if not name.startswith(STEP_PREFIX) or safe_io.is_temp_name(name):
        return None
    digits = name[len(STEP_PREFIX) :]
    return int(digits) if digits.isdigit() else None


# --- JSON encoding of nested state with tensors pulled out -------------------------------


def encode_state(obj: Any, tensors: dict[str, torch.Tensor], path: str = "s") -> Any:
    """JSON-able form of ``obj``; tensors (and numpy arrays) are moved into ``tensors``.

    Supported: None, bool, int, float (inf/nan included), str, list, tuple, dict with str /
    int / float / bool / None keys, torch.Tensor, numpy.ndarray. Anything else raises
    TypeError naming where it sits, rather than being pickled.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        if obj != obj or obj in (float("inf"), float("-inf")):
            return {"__float__": repr(obj)}  # strict JSON has no nan/inf
        return obj  # json writes repr(), which reads back bit-exactly
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu()
        return {"__tensor__": path}
    if type(obj).__module__ == "numpy" and hasattr(obj, "dtype"):
        import numpy as np

        if isinstance(obj, np.ndarray):
            tensors[path] = torch.from_numpy(np.ascontiguousarray(obj).copy())
            return {"__ndarray__": path}
        return encode_state(obj.item(), tensors, path)  # numpy scalar
    if isinstance(obj, (list, tuple)):
        items = [encode_state(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, Mapping):
        pairs = []
        for i, (key, value) in enumerate(obj.items()):
            if not (key is None or isinstance(key, (str, int, float, bool))):
                raise TypeError(f"checkpoint state: key {key!r} at {path} is a {type(key).__name__}; use str or int")
            pairs.append([encode_state(key, tensors, f"{path}.k{i}"), encode_state(value, tensors, f"{path}.{i}")])
        return {"__dict__": pairs}
    raise TypeError(
        f"checkpoint state: value at {path} is a {type(obj).__name__}, which cannot be saved without pickle"
    )


def decode_state(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of ``encode_state``."""
    if isinstance(obj, list):
        return [decode_state(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__float__" in obj:
            return float(obj["__float__"])
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return tensors[obj["__ndarray__"]].numpy()
        if "__tuple__" in obj:
            return tuple(decode_state(v, tensors) for v in obj["__tuple__"])
        if "__dict__" in obj:
            return {decode_state(k, tensors): decode_state(v, tensors) for k, v in obj["__dict__"]}
        raise ValueError(f"checkpoint state: unknown tag in {list(obj)[:3]}")
    return obj


# --- saving ------------------------------------------------------------------------------


def _remove_stale_temps(directory: Path) -> None:
    for entry in directory.iterdir():
        if entry.name.startswith(f".{STEP_PREFIX}") and safe_io.is_temp_name(entry.name):
            shutil.rmtree(entry, ignore_errors=True)


def save_checkpoint(
    directory: str | os.PathLike,
    step: int,
    tensors: Mapping[str, torch.Tensor],
    optimizer_state: Mapping | None,
    config_json: str,
    extra: Mapping | None = None,
    keep: int = 3,
) -> Path:
    """Write checkpoint ``step`` into ``directory`` atomically; keep only the newest ``keep``.

    ``tensors``: the trainable tensors by name. ``optimizer_state``: e.g.
    ``optimizer.state_dict()`` (any nest of tensors / numpy arrays / tuples / dicts).
    ``config_json``: the run's TrainConfig JSON, checked on resume. ``extra``: JSON-able
    info (loss history, concept tokens...).
    Returns the step folder.
    """
    if step < 0:
        raise ValueError(f"checkpoint step {step} must be >= 0")
    if keep < 1:
        raise ValueError(f"keep={keep}: at least one checkpoint must be kept")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(directory)
    final = directory / step_dir_name(step)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=safe_io.TEMP_MARKER, dir=directory))
    try:
        _write_step_files(work, step, tensors, optimizer_state, config_json, extra)
        _put_in_place(work, final)
        safe_io.fsync_dir(directory)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    for old in list_checkpoints(directory)[:-keep]:
        shutil.rmtree(directory / step_dir_name(old), ignore_errors=True)
    return final


def _write_step_files(work: Path, step: int, tensors, optimizer_state, config_json: str, extra) -> None:
    """The files of one checkpoint (tensors, state, manifest with their hashes) into ``work``."""
    state_tensors: dict[str, torch.Tensor] = {}
    state = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "step": step,
        "config_json": config_json,
        "optimizer": encode_state(optimizer_state, state_tensors, "optimizer"),
        "extra": encode_state(dict(extra or {}), state_tensors, "extra"),
    }
    safe_io.save_tensors(work / "tensors.safetensors", tensors)
    safe_io.save_tensors(work / "state.safetensors", state_tensors)
    safe_io.atomic_write_text(work / "state.json", json.dumps(state))
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "step": step,
        "files": {
            name: {"sha256": safe_io.sha256_file(work / name), "bytes": (work / name).stat().st_size} for name in _FILES
        },
    }
    safe_io.atomic_write_text(work / _MANIFEST, json.dumps(manifest, indent=1))


def _put_in_place(work: Path, final: Path) -> None:
    """Rename the finished ``work`` folder to ``final``; an existing step of that number (re-saved
    after resuming) is moved aside first, so one of the two is always complete on disk."""
    if final.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", suffix=safe_io.TEMP_MARKER, dir=final.parent))
        os.replace(final, aside / final.name)
        os.replace(work, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(work, final)


# --- loading -----------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A verified checkpoint: what ``save_checkpoint`` was given, back exactly."""

    step: int
    tensors: dict[str, torch.Tensor]
    optimizer_state: Any
    config_json: str
    extra: dict
    path: Path
    skipped: list[str] = field(default_factory=list)
    """Newer checkpoints that failed verification, each 'step-N: reason' (for the user log)."""


def list_checkpoints(directory: str | os.PathLike) -> list[int]:
    """Steps that have a (not temporary) step folder, oldest first; verification not implied."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    steps = [_step_of(entry.name) for entry in directory.iterdir() if entry.is_dir()]
    return sorted(step for step in steps if step is not None)


def verify_checkpoint(step_dir: str | os.PathLike) -> None:
    """Raise ValueError unless the manifest exists and every file matches its sha256 and size."""
    step_dir = Path(step_dir)
    try:
        manifest = json.loads((step_dir / _MANIFEST).read_text())
    except FileNotFoundError:
        raise ValueError("no manifest (the write was interrupted)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"manifest unreadable ({exc})") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ValueError("manifest is not a textloc checkpoint manifest")
    if manifest.get("format") != FORMAT_NAME:
        raise ValueError(f"not a textloc checkpoint (format {manifest.get('format')!r})")
    if not isinstance(manifest.get("format_version"), int) or manifest["format_version"] > FORMAT_VERSION:
        raise ValueError(f"format version {manifest.get('format_version')} is newer than this textloc; update it")
    for name in _FILES:
        entry = manifest["files"].get(name)
        path = step_dir / name
        if not isinstance(entry, dict) or not path.is_file():
            raise ValueError(f"{name} is missing")
        if path.stat().st_size != entry["bytes"]:
            raise ValueError(f"{name} has {path.stat().st_size} bytes, expected {entry['bytes']} (truncated)")
        if safe_io.sha256_file(path) != entry["sha256"]:
            raise ValueError(f"{name} does not match its sha256 (corrupt)")


def _settings(text: str):
    """Every setting of a run, as ``TrainConfig`` reads its JSON: a key that an older version did
    not write reads as what that version did (a fixed run's absent ``attention_weight_mode`` is
    "fixed"), so upgrading the pack does not strand a run's checkpoints. Other JSON as it is."""
    data = json.loads(text)
    try:
        return asdict(TrainConfig.from_dict(data)) if isinstance(data, dict) else data
    except (TypeError, ValueError):
        return data


def config_difference(
    saved: str, current: str, ignore: tuple[str, ...] = CONTINUED_KEYS, saved_in: str = "the checkpoint"
) -> list[str]:
    """The settings in which the run of config JSON ``saved`` differs from ``current``, as
    "key: saved value in <saved_in>, current value now" (empty: the same run), leaving out
    ``ignore``, the settings a continued run may change. Checkpoints and the adapter files a
    run replaces are both checked with it."""
    try:
        a, b = _settings(saved), _settings(current)
    except json.JSONDecodeError:
        return [] if saved == current else ["config"]
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [] if a == b else ["config"]
    # a setting only the checkpoint names no longer exists, so it cannot change what runs now
    keys = sorted(set(b) - set(ignore))
    return [f"{k}: {a.get(k)!r} in {saved_in}, {b.get(k)!r} now" for k in keys if a.get(k) != b.get(k)]


def load_checkpoint(step_dir: str | os.PathLike) -> Checkpoint:
    """Verify and read one step folder (ValueError when it does not verify)."""
    step_dir = Path(step_dir)
    verify_checkpoint(step_dir)
    tensors, _ = safe_io.load_tensors(step_dir / "tensors.safetensors", "checkpoint file", "it will be skipped")
    state_tensors, _ = safe_io.load_tensors(step_dir / "state.safetensors", "checkpoint file", "it will be skipped")
    state = json.loads((step_dir / "state.json").read_text())
    return Checkpoint(
        step=int(state["step"]),
        tensors=tensors,
        optimizer_state=decode_state(state["optimizer"], state_tensors),
        config_json=state["config_json"],
        extra=decode_state(state["extra"], state_tensors),
        path=step_dir,
    )


def _refuse_other_run(directory, step: int, saved_json: str, config_json: str, ignore: tuple[str, ...]) -> None:
    diff = config_difference(saved_json, config_json, ignore)
    if diff:
        raise ValueError(
            f"checkpoint folder {directory} holds a run with other settings ({'; '.join(diff)}): "
            "resume with the same settings, or train into a new folder"
        )
    try:
        steps = json.loads(config_json).get("steps")
    except (json.JSONDecodeError, AttributeError):
        steps = None
    if isinstance(steps, int) and step > steps:
        raise ValueError(
            f"checkpoint folder {directory} holds a run already at step {step}, more than steps={steps}: "
            f"set steps to {step} or more to continue it, or train into a new folder (or turn resume off)"
        )


def check_resumable(
    directory: str | os.PathLike, config_json: str, ignore_config_keys: tuple[str, ...] = CONTINUED_KEYS
) -> None:
    """Refuse, before any expensive set-up, to resume a run written with other settings or
    already past ``steps``: reads only the newest readable step's ``state.json`` (no tensors).
    ``load_latest_checkpoint`` checks the same again on the checkpoint it loads."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for step in reversed(list_checkpoints(directory)):
        try:
            state = json.loads((directory / step_dir_name(step) / "state.json").read_text())
            saved, saved_step = state["config_json"], int(state["step"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # damaged: load_latest_checkpoint will skip it too
        _refuse_other_run(directory, saved_step, saved, config_json, ignore_config_keys)
        return


def load_latest_checkpoint(
    directory: str | os.PathLike, config_json: str | None = None, ignore_config_keys: tuple[str, ...] = CONTINUED_KEYS
) -> Checkpoint | None:
    """The newest checkpoint in ``directory`` that verifies, or None when there is none.

    Damaged or half-written step folders are skipped (listed in ``Checkpoint.skipped``).
    When ``config_json`` is given and the checkpoint was written by a run with different
    settings (other than ``ignore_config_keys``: extending a run is fine; settings that only
    the checkpoint names are retired ones), raises ValueError naming the differences, since
    resuming it would silently mix two experiments.
    """
    skipped: list[str] = []
    for step in reversed(list_checkpoints(directory)):
        step_dir = Path(directory) / step_dir_name(step)
        try:
            checkpoint = load_checkpoint(step_dir)
        except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
            # any damage, however odd, means "not this one": fall back to the previous step
            skipped.append(f"{step_dir.name}: {exc}")
            continue
        if config_json is not None:
            _refuse_other_run(directory, checkpoint.step, checkpoint.config_json, config_json, ignore_config_keys)
        checkpoint.skipped = skipped
        return checkpoint
    return None
