"""Where the pack reads and writes inside ComfyUI's folders, and nowhere else.

* ``models/textloc/``                  adapters (``<name>.safetensors``), listed by the Apply node;
  the adapters the pack ships (``textloc_core/tinyworld/adapters/``) are listed after them (a
  user's file of the same name is written only by the same training, or with ``overwrite``);
* ``models/textloc/checkpoints/<name>/`` training checkpoints (resume, cancel);
* ``models/textloc/prior_cache/``       generated class-prior latents, reused across runs;
* ``models/loras/textloc/<name>.safetensors``   the K/V deltas as a stock ComfyUI ``diff`` LoRA;
* ``models/embeddings/textloc/<name>/<concept>.safetensors``  each token as a stock embedding,
  ``embedding:textloc/<name>/<concept>`` in a prompt: one folder per adapter, so no two
  adapters' files can share a name (``col2`` + ``p_q`` and ``col2_p`` + ``q`` once did).

Every name a user types goes through ``safe_io.check_name`` and the joined path must stay
inside its root (``safe_io.safe_join``), so no name can write outside these folders; adapter
names also pass ``check_adapter_name`` (no characters a prompt's ``embedding:`` cannot carry)
and every name is at most ``MAX_NAME_BYTES`` long, checked before training starts.
"""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from ..textloc_core.data.safe_io import check_name, safe_filename, safe_join
from ..textloc_core.tinyworld import shipped_adapters_dir

FOLDER = "textloc"
EXTENSIONS = {".safetensors"}
#: the longest adapter or concept name, in UTF-8 bytes: the temporary names of atomic writes add
#: about 60 bytes, and common file systems allow 255 per name
MAX_NAME_BYTES = 128
#: characters ComfyUI's prompt parser splits an ``embedding:NAME`` at (besides spaces)
_PROMPT_BREAKERS = set("()[]{},")


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


def check_length(name: str, what: str) -> str:
    """``name`` when its UTF-8 form fits ``MAX_NAME_BYTES``; else a ValueError naming ``what``."""
    size = len(name.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        shown = name if len(name) <= 40 else name[:40] + "..."
        raise ValueError(
            f"{what} {shown!r} is {size} bytes long; file names are made from it, so it may be at most "
            f"{MAX_NAME_BYTES}: pick a shorter name"
        )
    return name


def check_adapter_name(name: str, what: str = "adapter_name") -> str:
    """An adapter name usable for every file of the adapter and in ``embedding:textloc/<name>/...``."""
    check_name(name, what)
    bad = sorted({c for c in name if c.isspace() or c in _PROMPT_BREAKERS})
    if bad:
        shown = " ".join("space" if c == " " else repr(c) for c in bad)
        raise ValueError(
            f"{what} {name!r}: contains {shown}, which a prompt's embedding:NAME cannot carry; use letters, "
            "digits, '-', '_' or '.', e.g. 'my_adapter'"
        )
    return check_length(name, what)


def shipped_adapter(name: str) -> Path | None:
    """The adapter file the pack ships under ``name`` (compared without case, as on
    case-insensitive file systems), or None."""
    folder = Path(shipped_adapters_dir())
    found = [p for p in folder.glob("*.safetensors") if p.stem.lower() == name.lower()] if folder.is_dir() else []
    return found[0] if found else None


def shown(path: str | os.PathLike) -> str:
    """``path`` as a message shown over HTTP names it: relative to ComfyUI's folder
    (``models/textloc/x.safetensors``), the pack's own files as ``textloc pack: <name>``, and
    anything else by its file name; the server's own folders are not the user's business."""
    path = Path(os.path.realpath(path))
    for root, prefix in ((folder_paths.base_path, ""), (shipped_adapters_dir(), "textloc pack: ")):
        root = Path(os.path.realpath(root))
        if root in path.parents:
            return prefix + path.relative_to(root).as_posix()
    return path.name


def adapter_path(name: str) -> Path:
    return safe_join(textloc_root(), f"{check_name(name, 'adapter name')}.safetensors", what="adapter name")


def checkpoint_dir(name: str) -> Path:
    return safe_join(textloc_root(), "checkpoints", check_name(name, "adapter name"), what="adapter name")


def prior_cache_dir() -> Path:
    return safe_join(textloc_root(), "prior_cache")


def lora_path(name: str) -> Path:
    return safe_join(_first("loras"), FOLDER, f"{check_name(name, 'adapter name')}.safetensors", what="adapter name")


def embedding_stem(concept: str) -> str:
    """The file name (no suffix) of ``concept``'s embedding: its letters, digits, - _ ."""
    return check_length(safe_filename(concept, "concept name"), "concept name")


def embedding_name(adapter: str, concept: str) -> str:
    """The ``embedding:NAME`` a prompt uses for ``concept`` of adapter ``adapter``: the file's path
    under models/embeddings, which ComfyUI's ``load_embed`` (0.3.64 and 0.33.0) joins to that folder."""
    return f"{FOLDER}/{check_name(adapter, 'adapter name')}/{embedding_stem(concept)}"


def embedding_dir(adapter: str) -> Path:
    """The adapter's own embeddings folder, ``models/embeddings/textloc/<adapter>``."""
    return safe_join(_first("embeddings"), FOLDER, check_name(adapter, "adapter name"), what="adapter name")


def embedding_path(adapter: str, concept: str) -> Path:
    return safe_join(embedding_dir(adapter), f"{embedding_stem(concept)}.safetensors", what="concept name")


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
