"""Where the pack reads and writes inside ComfyUI's folders, and nowhere else.

* ``models/textloc/``                  adapters (``<name>.safetensors``), listed by the Apply node;
  the adapters the pack ships (``textloc_core/tinyworld/adapters/``) are listed after them;
* ``models/textloc/checkpoints/<name>/`` training checkpoints (resume, cancel);
* ``models/textloc/prior_cache/``       generated class-prior latents, reused across runs;
* ``models/loras/textloc/<name>.safetensors``   the K/V deltas as a stock ComfyUI ``diff`` LoRA;
* ``models/embeddings/textloc/<name>_<concept>.safetensors``  each token as a stock embedding.

Every name a user types goes through ``safe_io.check_name`` and the joined path must stay
inside its root (``safe_io.safe_join``), so no name can write outside these folders.
"""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from ..textloc_core.safe_io import check_name, safe_filename, safe_join
from ..textloc_core.tinyworld import shipped_adapters_dir

FOLDER = "textloc"
EXTENSIONS = {".safetensors"}


def register() -> None:
    """Make ``models/textloc`` a ComfyUI model folder (idempotent; keeps extra_model_paths), with
    the pack's shipped adapters searched last: a user's file of the same name wins, and files are
    written to the first folder only (``textloc_root``)."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    if FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[FOLDER] = ([], set(EXTENSIONS))
    paths, _exts = folder_paths.folder_names_and_paths[FOLDER]
    for folder in (default, str(shipped_adapters_dir())):
        if folder not in paths:
            paths.append(folder)


def textloc_root() -> Path:
    register()
    return Path(folder_paths.get_folder_paths(FOLDER)[0])


def _first(kind: str) -> Path:
    return Path(folder_paths.get_folder_paths(kind)[0])


def adapter_path(name: str) -> Path:
    return safe_join(textloc_root(), f"{check_name(name, 'adapter name')}.safetensors", what="adapter name")


def checkpoint_dir(name: str) -> Path:
    return safe_join(textloc_root(), "checkpoints", check_name(name, "adapter name"), what="adapter name")


def prior_cache_dir() -> Path:
    return safe_join(textloc_root(), "prior_cache")


def lora_path(name: str) -> Path:
    return safe_join(_first("loras"), FOLDER, f"{check_name(name, 'adapter name')}.safetensors", what="adapter name")


def embedding_name(adapter: str, concept: str) -> str:
    """The ``embedding:NAME`` a prompt uses for ``concept`` of adapter ``adapter``."""
    return f"{check_name(adapter, 'adapter name')}_{safe_filename(concept, 'concept name')}"


def embedding_path(adapter: str, concept: str) -> Path:
    return safe_join(_first("embeddings"), FOLDER, f"{embedding_name(adapter, concept)}.safetensors", what="adapter name")


def list_adapters() -> list[str]:
    """Adapter files under models/textloc (checkpoints and caches excluded)."""
    register()
    return [
        name
        for name in folder_paths.get_filename_list(FOLDER)
        if not name.replace("\\", "/").startswith(("checkpoints/", "prior_cache/"))
    ]


def resolve_adapter(name: str) -> Path:
    """Full path of a listed adapter file; ComfyUI's own lookup refuses names leaving the folder."""
    register()
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None:
        raise ValueError(f"adapter_file: {name!r} is not in models/{FOLDER}; refresh the node list or train it first")
    return Path(path)
