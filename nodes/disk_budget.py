"""A per-server disk budget for what the pack keeps between runs: training checkpoints
(``models/textloc/checkpoints/<name>/<data hash>/``, each with optimizer state) and class-prior
caches (``models/textloc/prior_cache/``). Anyone who can queue prompts can pick fresh adapter
names, so without a bound they could fill the disk.

``TEXTLOC_DISK_BUDGET_MB`` (MiB; read each time Train runs; default ``DEFAULT_BUDGET_MB``) is
what the two folders may hold. Before a training, ``make_room`` brings them under it by
removing, oldest first, the checkpoint folders of finished adapters (their adapter file
exists, so only "continue training" would use them), then prior caches (regenerated when
needed). Checkpoints of unfinished trainings are the only copy of that work and are never
removed: when they alone exceed the budget, Train is refused, naming the setting.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

from . import paths

BUDGET_ENV = "TEXTLOC_DISK_BUDGET_MB"
DEFAULT_BUDGET_MB = 20 * 1024
log = logging.getLogger("textloc")


def budget_bytes() -> int:
    """The budget in bytes from ``$TEXTLOC_DISK_BUDGET_MB`` (a whole number of MiB)."""
    raw = os.environ.get(BUDGET_ENV, "").strip()
    if not raw:
        return DEFAULT_BUDGET_MB << 20
    if not raw.isdigit():
        raise ValueError(
            f"the server's {BUDGET_ENV} is {raw[:20]!r}, not a whole number of MiB: the server owner sets it, "
            f"e.g. {BUDGET_ENV}=20480 (README, Security)"
        )
    return int(raw) << 20


def size_of(path: Path) -> int:
    """Bytes of the files under ``path`` (links are not followed)."""
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    total = 0
    for folder, _dirs, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:  # removed meanwhile
                pass
    return total


def kept_folders() -> list[Path]:
    """The folders the budget covers."""
    root = paths.textloc_root()
    return [root / "checkpoints", root / "prior_cache"]


def usage() -> int:
    """Bytes the budget's folders hold now."""
    return sum(size_of(folder) for folder in kept_folders() if folder.exists())


def _removable(keep: str) -> list[Path]:
    """What may go, oldest first within each kind: finished adapters' checkpoint folders (not
    those of ``keep``, the adapter about to train), then prior cache files."""
    root = paths.textloc_root()
    finished = []
    checkpoints = root / "checkpoints"
    for adapter in checkpoints.iterdir() if checkpoints.is_dir() else ():
        if (
            adapter.is_dir()
            and not adapter.is_symlink()
            and adapter.name != keep
            and (root / f"{adapter.name}.safetensors").is_file()
        ):
            finished += [run for run in adapter.iterdir() if run.is_dir() and not run.is_symlink()]
    priors = (
        [p for p in (root / "prior_cache").glob("*.safetensors") if p.is_file()]
        if (root / "prior_cache").is_dir()
        else []
    )
    return sorted(finished, key=_age) + sorted(priors, key=_age)


def _age(path: Path) -> float:
    return path.stat().st_mtime


def make_room(keep: str) -> int:
    """Bring the budget's folders under the budget before adapter ``keep`` trains (module doc);
    returns the bytes they hold after. Raises ValueError when only unfinished trainings' checkpoints
    (and ``keep``'s own) are left and they still exceed it."""
    budget, used = budget_bytes(), usage()
    for path in _removable(keep):
        if used < budget:
            break
        freed = size_of(path)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            with contextlib.suppress(OSError):  # other runs of that adapter may remain
                path.parent.rmdir()
        else:
            path.unlink(missing_ok=True)
        used -= freed
        log.warning(
            "textloc: disk budget: removed %s (%.1f MiB) to stay under %s", paths.shown(path), freed / 2**20, BUDGET_ENV
        )
    if used >= budget:
        raise ValueError(
            f"the pack's disk budget is spent: checkpoints that are not removed by themselves (those of unfinished "
            f"trainings, and {keep!r}'s own) hold {used / 2**20:.0f} MiB of the {budget / 2**20:.0f} MiB the server "
            f"owner allows ({BUDGET_ENV}, README, Security); finish or delete those trainings "
            "(models/textloc/checkpoints/<name>/), or ask the server owner to raise the budget"
        )
    return used
