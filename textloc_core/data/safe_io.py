"""Safe file handling for everything the pack writes or reads.

Three promises, each one function family:

* **Names stay inside their folder.** ``check_name`` / ``safe_join`` refuse any user-typed
  name that could leave the folder it is meant for (path separators, ``..``, absolute paths,
  drive letters, NUL and other control characters), and ``safe_join`` re-checks the resolved
  path, so a symlink cannot carry a write outside the root either.
* **A file is either the old one or the new one, never half of each.** ``atomic_write_*``
  write to a temporary file in the target's folder, fsync it, ``os.replace`` it over the
  target and fsync the folder. A process killed mid-write leaves at most a temporary file
  (``is_temp_name`` recognises it) and the previous file intact.
* **Loading never runs code.** Tensors come from safetensors only; the one exception is
  legacy ``.pt``/``.bin`` embeddings, read with ``torch.load(weights_only=True)``.
  ``save_tensors`` stores a sha256 of the tensor bytes in the header and ``load_tensors``
  checks it, so a bit flip is caught as surely as a truncation.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

TEMP_MARKER = ".textloc-tmp"
"""Part of every temporary file/folder name we create, so readers can skip them."""

DIGEST_KEY = "textloc.sha256"
"""safetensors header key holding ``tensors_digest`` of the file's tensors."""

_FORBIDDEN_CHARS = set('/\\:*?"<>|')


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it can be used as one file or folder name, else raise ValueError.

    ``what`` names the input in the error ("adapter name", "concept name"). Rejected: empty
    names, ``.``/``..`` or any ``..`` run, path separators (``/`` and ``\\``), drive letters
    and other characters Windows forbids in names, NUL and control characters, leading or
    trailing spaces. Only a plain, single-component name passes.
    """
    if not isinstance(name, str):
        raise ValueError(f"{what}: expected text, got {type(name).__name__}")
    fix = "use letters, digits, '-', '_' or '.' only, e.g. 'my_concept'"
    if not name or not name.strip():
        raise ValueError(f"{what}: is empty; {fix}")
    if name != name.strip():
        raise ValueError(f"{what} {name!r}: starts or ends with a space; {fix}")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError(f"{what} {name!r}: contains a NUL or control character; {fix}")
    if ".." in name or name == ".":
        raise ValueError(f"{what} {name!r}: contains '..' (could leave its folder); {fix}")
    bad = sorted(set(name) & _FORBIDDEN_CHARS)
    if bad:
        kind = "a path separator" if set(bad) & {"/", "\\"} else "a character not allowed in file names"
        raise ValueError(f"{what} {name!r}: contains {kind} ({' '.join(bad)}); {fix}")
    if os.path.isabs(name):  # pragma: no cover - covered by the separator rule on every OS
        raise ValueError(f"{what} {name!r}: is an absolute path; {fix}")
    return name


def safe_filename(text: str, what: str = "name") -> str:
    """A file name made from arbitrary text (e.g. a token ``<doll1>`` -> ``doll1``).

    Keeps letters, digits, ``-``, ``_`` and ``.``; drops everything else. Raises ValueError
    when nothing usable is left.
    """
    kept = "".join(c for c in text if c.isalnum() or c in "-_.").strip(".")
    while ".." in kept:
        kept = kept.replace("..", ".")
    if not kept:
        raise ValueError(f"{what} {text!r}: has no letters or digits to build a file name from")
    return check_name(kept, what)


def is_inside(root: str | os.PathLike, path: str | os.PathLike) -> bool:
    """True when ``path`` (after resolving symlinks and ``..``) lies in or at ``root``."""
    root_r = Path(root).resolve()
    path_r = Path(path).resolve()
    return path_r == root_r or root_r in path_r.parents


def safe_join(root: str | os.PathLike, *names: str, what: str = "name") -> Path:
    """``root / name1 / name2 ...`` where every name passed ``check_name``.

    The joined path is resolved and must still lie inside ``root``: this also stops a
    symlink planted inside ``root`` from redirecting the file elsewhere.
    """
    path = Path(root)
    for name in names:
        path = path / check_name(name, what)
    if not is_inside(root, path):
        raise ValueError(f"{what} {'/'.join(names)!r}: resolves outside {root} (a symlink?); pick another name")
    return path


def is_temp_name(name: str) -> bool:
    """True for a temporary file or folder left by an interrupted atomic write."""
    return TEMP_MARKER in name


def fsync_dir(directory: Path) -> None:
    """Flush a folder's entries to disk after a rename, create or remove in it (where the
    platform allows), so the new name survives a crash: without it a crash can bring back the
    old name. Every writer of this package that renames uses it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def temp_path_for(path: str | os.PathLike) -> Path:
    """A fresh, unused temporary path in ``path``'s folder (created empty)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_MARKER, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def commit_temp(tmp: str | os.PathLike, path: str | os.PathLike) -> Path:
    """fsync ``tmp`` and move it over ``path`` atomically; removes ``tmp`` on failure."""
    tmp, path = Path(tmp), Path(path)
    try:
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Write ``path`` atomically: ``write(handle)`` fills a temp file that then replaces it."""
    tmp = temp_path_for(path)
    try:
        with open(tmp, "wb") as handle:
            write(handle)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return commit_temp(tmp, path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The raw bytes of ``tensor`` (any dtype, bf16 included), C order, on CPU."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of ``tensors`` (order independent)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        digest.update(tensor_bytes(tensor))
    return digest.hexdigest()


def _prepare(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, detached; tensors sharing storage are copied (safetensors refuses them)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"tensor {name!r}: expected a torch.Tensor, got {type(tensor).__name__}")
        t = tensor.detach().cpu().contiguous()
        if t.numel() and t.untyped_storage().data_ptr() in seen:
            t = t.clone()
        if t.numel():
            seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def save_tensors(
    path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``tensors`` + string ``metadata`` as safetensors, atomically, with a content digest."""
    prepared = _prepare(tensors)
    header = {str(k): str(v) for k, v in (metadata or {}).items()}
    header[DIGEST_KEY] = tensors_digest(prepared)
    tmp = temp_path_for(path)
    try:
        save_file(prepared, str(tmp), metadata=header)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return commit_temp(tmp, path)


PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
"""How pickle files start: torch.save's zip archive, or a bare pickle of protocol 2-5 (whose
next byte is an opcode, never 0; a safetensors file starts with its header length, whose
third byte is 0 for any header under 16 MiB)."""


def is_pickle_file(path: str | os.PathLike) -> bool:
    """True when ``path`` starts like a pickle (``torch.save`` output), whatever its name says."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return False
    return head.startswith(PICKLE_MAGIC[0]) or (len(head) > 2 and head[:2] in PICKLE_MAGIC and head[2] != 0)


def _corrupt(what: str, path: Path, detail: str, fix: str) -> ValueError:
    # The file is named by its name only, here and in the messages below: they may be shown
    # over HTTP, where the server's folders are not the user's business.
    if is_pickle_file(path):
        return ValueError(
            f"{what} {path.name} is a pickle file, not safetensors; textloc never unpickles: "
            "convert it to .safetensors with a tool you trust"
        )
    return ValueError(f"{what} {path.name} is truncated or corrupt ({detail.replace(str(path), path.name)}): {fix}")


def _existing_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path; FileNotFoundError naming ``what`` when there is no such file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path.name} does not exist")
    return path


def read_metadata(path: str | os.PathLike, what: str = "file", fix: str = "re-save it") -> dict[str, str]:
    """The safetensors header metadata of ``path`` without reading any tensor (cheap)."""
    path = _existing_file(path, what)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise _corrupt(what, path, str(exc), fix) from exc


def load_tensors(
    path: str | os.PathLike, what: str = "file", fix: str = "re-save it", verify: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file: (tensors on CPU, metadata).

    A file that is missing raises FileNotFoundError; one that is truncated, not safetensors,
    or whose tensors no longer match the digest stored at save time raises
    ``ValueError("<what> <path> is truncated or corrupt (...): <fix>")``.
    """
    path = _existing_file(path, what)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _corrupt(what, path, str(exc), fix) from exc
    expected = metadata.get(DIGEST_KEY)
    if verify and expected is not None and tensors_digest(tensors) != expected:
        raise _corrupt(what, path, "tensor bytes do not match the checksum written with them", fix)
    return tensors, metadata


def load_legacy_tensor_file(path: str | os.PathLike, what: str = "embedding file") -> object:
    """Load a legacy ``.pt``/``.bin`` file with ``torch.load(weights_only=True)``.

    Only tensors and plain containers load; a file that needs arbitrary classes (a pickle
    that could run code) is refused with ValueError.
    """
    path = _existing_file(path, what)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as exc:
        raise ValueError(
            f"{what} {path.name} cannot be loaded safely (it is corrupt, or holds Python objects beyond "
            f"tensors, which are never unpickled): convert it to .safetensors ({str(exc).replace(str(path), path.name)})"
        ) from exc
