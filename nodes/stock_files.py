"""One adapter's files: the adapter, and the same in ComfyUI's own formats for stock nodes.

The writers are ``textloc_core.adapters``'; this module decides where the files go inside
ComfyUI's folders (``nodes/paths.py``) and that they arrive together:

* the adapter -> ``models/textloc/<name>.safetensors`` (TextLoc Apply Adapter lists it);
* K/V deltas -> ``models/loras/textloc/<name>.safetensors`` (``diffusion_model.<layer>.to_k.diff``),
  which ``LoraLoaderModelOnly`` at strength s applies as W + s * delta: the same arithmetic
  as our Apply node;
* each token -> ``models/embeddings/textloc/<name>/<concept>.safetensors`` (one tensor per text
  encoder), used by ``CLIPTextEncode`` as ``embedding:textloc/<name>/<concept>``. One folder per
  adapter, so no two adapters' files can share a name.

``plan_files`` checks every name and folder before training (length, clashes, names the pack
a test file of the longest name written) and finishes or rolls back a commit of the same
name that a kill interrupted; ``check_replace`` refuses to replace another adapter's files
unless asked; ``write_files`` writes all to temporaries and then moves them into place as one
change through a commit journal (``textloc_core.data.file_commit``): the old set or the new set,
whatever stops the process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..textloc_core.adapters.adapter import Adapter, read_adapter_metadata, save_adapter
from ..textloc_core.adapters.formats import COMFY_EMBEDDING_FORMAT, write_comfy_embedding, write_comfy_unet_patch
from ..textloc_core.data import file_commit, safe_io
from ..textloc_core.training.checkpoint import config_difference
from . import paths

log = logging.getLogger("textloc")


@dataclass
class AdapterFiles:
    """Where one adapter's files go."""

    name: str
    adapter: Path
    lora: Path
    embeddings: dict[str, Path]  # concept name -> file

    def all(self) -> list[Path]:
        """Every file, in writing order: the adapter (what Apply lists) last."""
        return [*self.embeddings.values(), self.lora, self.adapter]


def journal_path(name: str) -> Path:
    """Where the commit of adapter ``name``'s files keeps its journal (hidden, skipped by readers)."""
    return paths.textloc_root() / f".{paths.check_adapter_name(name)}.commit{safe_io.TEMP_MARKER}"


def _probe(path: Path) -> None:
    """Create and remove, in ``path``'s folder, a file named as long as the longest name writing
    ``path`` creates (the writer's temporary of our temporary): a name too long for this file
    system, or a folder that cannot be written, fails now instead of after training."""
    longest = file_commit.temporary_beside(file_commit.temporary_beside(path, "x" * 8), "x" * 8)
    created = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(longest, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.unlink(longest)
    except OSError as error:
        raise ValueError(
            f"adapter_name: cannot write {paths.shown(path)} ({error.strerror or type(error).__name__}); use a shorter adapter_name or concept "
            "name, or make the folder writable"
        ) from None
    finally:
        for folder in created:  # the folders come back when the files are written
            try:
                folder.rmdir()
            except OSError:
                break


def plan_files(name: str, concept_names: list[str]) -> AdapterFiles:
    """Every file of adapter ``name``, checked before training: names (``paths``), no two concepts
    sharing an embedding file (names are compared as file names: 'a+b' and 'ab', 'A' and 'a'),
    and each folder writable with the longest name used."""
    paths.check_adapter_name(name)
    stems: dict[str, str] = {}
    for concept in concept_names:
        stem = paths.embedding_stem(concept)
        if stem.lower() in stems:
            raise ValueError(
                f"concept names {stems[stem.lower()]!r} and {concept!r} would share the embedding file "
                f"{stem}.safetensors (file names keep letters, digits, - _ . and ignore case): rename one"
            )
        stems[stem.lower()] = concept
    files = AdapterFiles(
        name,
        paths.adapter_path(name),
        paths.lora_path(name),
        {concept: paths.embedding_path(name, concept) for concept in concept_names},
    )
    outcome = file_commit.recover(journal_path(name), files.all() + _other_embeddings(files))
    if outcome is not None:
        log.warning("textloc: the interrupted writing of adapter %r was %s", name, outcome)
    for path in files.all():
        _probe(path)
    return files


def _other_embeddings(files: AdapterFiles) -> list[Path]:
    """Embedding files in the adapter's folder that this adapter does not write (stale ones)."""
    folder = paths.embedding_dir(files.name)
    mine = set(files.embeddings.values())
    return sorted(p for p in folder.glob("*.safetensors") if p not in mine) if folder.is_dir() else []


def check_replace(files: AdapterFiles, concepts, config_json: str, fingerprint, overwrite: bool) -> None:
    """Refuse, before training, to replace files of adapter ``files.name`` that another training
    made, unless ``overwrite``. The same training continued may replace them: its adapter file
    says the same photos and masks (data hash), concepts, base model and settings apart from
    ``CONTINUED_KEYS`` (what resuming from its checkpoints allows too). ``fingerprint()``
    gives the base model's fingerprint (only called when an adapter file exists).

    A name the pack ships an adapter under (``tinyworld_pair``) counts as taken by that file:
    the user's file would be listed before it and replace it, for every user of the server, in
    the shipped workflows; only the same training (the shipped train_multi_concept) may."""
    existing = [p for p in files.all() if p.exists()] + _other_embeddings(files)
    shipped = None if files.adapter.exists() else paths.shipped_adapter(files.name)
    if overwrite or not (existing or shipped):
        return
    fix = "pick another adapter_name, or turn overwrite on to replace that adapter and its LoRA and embeddings"
    if existing and not files.adapter.exists():
        listed = ", ".join(paths.shown(p) for p in existing[:3])
        raise ValueError(f"adapter_name: {files.name!r} already has files ({listed}) but no adapter file; {fix}")
    reference = shipped or files.adapter
    described = paths.shown(reference) + (
        ", which the pack ships and the shipped workflows use for every user of this server" if shipped else ""
    )
    try:
        meta = read_adapter_metadata(reference)
    except (ValueError, OSError):
        raise ValueError(f"adapter_name: {files.name!r} names an unreadable adapter file {described}; {fix}") from None
    ours = [
        {"name": c.name, "token": c.token, "class_word": c.class_word, "init_word": c.init_word or ""}
        for c in concepts.concepts
    ]

    settings = config_difference(meta.train_config, config_json, saved_in="that adapter")
    differences = [
        what
        for what, same in (
            ("photos or masks", meta.data_hashes.get("concept_set") == concepts.data_hash()),
            ("concepts or tokens", meta.concepts == ours),
            (f"settings ({'; '.join(settings)})", not settings),
            ("base model", meta.base_fingerprint == fingerprint()),
        )
        if not same
    ]
    if differences:
        raise ValueError(
            f"adapter_name: {files.name!r} already names an adapter ({described}) trained with other "
            f"{', '.join(differences)}; {fix}"
        )
    if _other_embeddings(files):
        raise ValueError(
            f"adapter_name: {files.name!r} has embedding files of other concepts in "
            f"{paths.shown(paths.embedding_dir(files.name))}; {fix}"
        )


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty (an earlier version's files), or absent
        pass


def write_files(files: AdapterFiles, adapter: Adapter, encoder_sizes: list[tuple[str, int]]) -> None:
    """Write the embeddings, the LoRA and the adapter to temporaries, then move them all into
    place as one change (the adapter last); on any failure no new file remains. Embedding files of concepts
    the adapter no longer has (an overwritten adapter) are removed after."""
    tokens = {c["name"]: c["token"] for c in adapter.metadata.concepts}
    staged = {path: file_commit.temporary_beside(path) for path in files.all()}
    try:
        for concept, path in files.embeddings.items():
            write_comfy_embedding(adapter.token_embeddings[tokens[concept]], staged[path], dict(encoder_sizes))
        write_comfy_unet_patch(adapter, staged[files.lora])
        save_adapter(adapter, staged[files.adapter])
    except BaseException:
        for temporary in staged.values():
            temporary.unlink(missing_ok=True)
        _remove_if_empty(paths.embedding_dir(files.name))
        raise
    try:
        file_commit.commit_files(staged, journal_path(files.name))
    except BaseException:
        _remove_if_empty(paths.embedding_dir(files.name))
        raise
    for stale in _other_embeddings(files):
        try:
            if safe_io.read_metadata(stale, "embedding file").get("format") == COMFY_EMBEDDING_FORMAT:
                stale.unlink()
        except (ValueError, OSError):
            pass  # not ours, or gone: leave it
