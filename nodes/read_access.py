"""What the pack's nodes may read: ComfyUI's input folder and the folders the server owner lists.

A ComfyUI server is often shared or exposed, and whoever can queue a prompt types the paths a
node reads. So a path typed into a node (Concept Folder's ``folder``, Score Images'
``feature_model``) is read only when, after every symlink and ``..`` is resolved, it lies in

* ComfyUI's input folder (``folder_paths.get_input_directory()``; relative paths start there), or
* a folder the server owner lists in ``$TEXTLOC_READ_ROOTS`` (absolute paths separated by
  ``os.pathsep``, e.g. ``/data/concepts:/data/clip``; read when the node runs).

``~`` is not expanded, and a folder is walked before it is read: a symlink anywhere inside it
that leads out of those folders is refused too. A path that does not exist and a path that is
not allowed get the same message, so the messages cannot be used to probe the server's disk.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

READ_ROOTS_ENV = "TEXTLOC_READ_ROOTS"
#: a folder holding more entries than this is refused (a concept folder holds tens of photos)
MAX_ENTRIES = 20_000
log = logging.getLogger("textloc")


def read_roots() -> list[Path]:
    """The folders nodes may read, symlinks resolved: the input folder, then $TEXTLOC_READ_ROOTS."""
    import folder_paths

    roots = [folder_paths.get_input_directory()]
    for entry in os.environ.get(READ_ROOTS_ENV, "").split(os.pathsep):
        entry = entry.strip()
        if not entry:
            continue
        if not os.path.isabs(entry):
            log.warning("textloc: %s entry %r is not an absolute path; ignored", READ_ROOTS_ENV, entry)
            continue
        roots.append(entry)
    return [Path(os.path.realpath(root)) for root in roots]


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def not_readable(what: str, shown: str) -> ValueError:
    """The one message for a path that is missing and for one that may not be read."""
    return ValueError(
        f"{what}: {shown!r} is not a file or folder this server lets nodes read (it does not exist, or lies "
        f"outside the readable folders): put it in ComfyUI's input folder and give its path relative to that "
        f"folder, or ask the server owner to list its folder in {READ_ROOTS_ENV} (README, Security)"
    )


def readable_path(text: str, what: str) -> Path:
    """The resolved path of ``text`` (relative to the input folder, or absolute) when nodes may
    read it and everything inside it; else ``not_readable``."""
    import folder_paths

    raw = text.strip()
    if not raw or "\x00" in raw:
        raise not_readable(what, raw)
    path = Path(raw)
    if not path.is_absolute():  # '~' stays a plain name: the input folder's '~', if any
        path = Path(folder_paths.get_input_directory()) / path
    return check_readable(path, what, raw)


def check_readable(path: Path, what: str, shown: str) -> Path:
    """``path`` resolved, when it exists and it (and, for a folder, everything in it) lies in a
    readable folder; else ``not_readable`` (or a message naming the link that leads out)."""
    roots = read_roots()
    try:
        resolved = Path(path).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):  # missing, a link loop, no permission, NUL
        raise not_readable(what, shown) from None
    if not _inside(resolved, roots):
        raise not_readable(what, shown)
    if resolved.is_dir():
        _check_tree(resolved, roots, what, shown)
    return resolved


def _check_tree(folder: Path, roots: list[Path], what: str, shown: str) -> None:
    """Refuse a folder with a link (at any depth, through linked folders too) leading out of
    ``roots``, or with more than MAX_ENTRIES entries. A dangling link counts by where it points,
    so whether its target exists is never told."""
    seen = {folder}
    count = 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        here = Path(dirpath)
        for name in dirnames + filenames:
            count += 1
            if count > MAX_ENTRIES:
                raise ValueError(
                    f"{what}: {shown!r} holds more than {MAX_ENTRIES} files and folders; point it at one concept "
                    "(or CLIP) folder"
                )
            entry = here / name
            if os.path.islink(entry) and not _inside(Path(os.path.realpath(entry)), roots):
                raise ValueError(
                    f"{what}: {shown!r} holds a link that leads outside the readable folders "
                    f"({entry.relative_to(folder).as_posix()}): copy the file in instead of linking it"
                )
        kept = []
        for name in dirnames:  # a linked folder is walked once (links may form loops)
            real = Path(os.path.realpath(here / name))
            if real not in seen:
                seen.add(real)
                kept.append(name)
        dirnames[:] = kept
