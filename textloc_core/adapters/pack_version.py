"""The pack's version, and which adapter files this version of the pack may read.

``pyproject.toml`` is the one place the version lives. The pack is not pip-installed inside
ComfyUI (it is a folder in ``custom_nodes/``), so the version is read from that file beside
``textloc_core``; an installed ``textloc`` distribution is the fallback for a copy of the core
without it. Adapter files record the version that wrote them (``textloc_version`` in their
header): a file from a newer major version may use what this one does not know, so it is
refused with the fix, while files of older versions, and those written before the field
held a version ("unknown"), load.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
UNKNOWN = "unknown"
_MAJOR = re.compile(r"(\d+)\.\d+")


def version_from_pyproject(path: str | os.PathLike) -> str | None:
    """``[project].version`` of a pyproject.toml, or None when it cannot be read."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: tomllib arrived in 3.11, tomli is its backport
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            return None
    try:
        version = tomllib.loads(Path(path).read_text(encoding="utf-8"))["project"]["version"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None
    return version if isinstance(version, str) and version.strip() else None


@functools.lru_cache(maxsize=1)
def pack_version() -> str:
    """This pack's version: pyproject.toml beside the core, else the installed distribution's,
    else ``"unknown"``."""
    found = version_from_pyproject(PYPROJECT)
    if found:
        return found
    from importlib import metadata

    try:
        return metadata.version("textloc")
    except metadata.PackageNotFoundError:
        return UNKNOWN


def major_of(version: str) -> int | None:
    """The major number of ``X.Y[.Z...]``; None for ``"unknown"`` or anything unparsable."""
    match = _MAJOR.match(version.strip())
    return int(match.group(1)) if match else None


def refuse_newer_major(path: str | os.PathLike, written_by: str, running: str | None = None) -> None:
    """Raise ValueError if the file at ``path`` was written by a newer major version of the pack.

    A version that says nothing (older files wrote "unknown") cannot be compared and passes,
    and so does every file when this pack's own version cannot be read.
    """
    running = pack_version() if running is None else running
    theirs, ours = major_of(written_by), major_of(running)
    if theirs is None or ours is None or theirs <= ours:
        return
    raise ValueError(
        f"adapter file {path} was written by textloc {written_by}, a newer major version than this "
        f"textloc {running}, and may hold what this version cannot read: update the textloc node "
        f"pack to {theirs}.0.0 or newer (ComfyUI-Manager, or git pull in custom_nodes/textloc)"
    )
