"""Readers that turn a folder of photos and masks into a ``ConceptSet``.

Three layouts are understood (``read_concepts`` picks the right one):

1. **Folder**: ``images/<stem>.png`` plus ``masks/<concept>/<stem>.png``. Each ``masks/``
   subfolder is a concept; an image may lack a concept's mask (that concept is then not in
   that photo), but every image needs at least one mask and every mask an image.
2. **Manifest**: ``textloc.json`` / ``textloc.yaml`` (or ``manifest.*``) in the folder::

       concepts:
         - {name: doll, token: "<doll>", class_word: doll, init_word: toy}
       images:
         - file: photos/1.png
           masks: {doll: masks/1_doll.png}
       invert_masks: false     # optional, see masks.py
       mask_channel: auto      # optional: auto | alpha | color

   Only ``name`` is required per concept. Paths are relative to the manifest's folder and
   may not leave it (no absolute paths, no ``..``, no symlinks pointing out).
3. **Paper layout** (arXiv 2402.09966's published data): ``<a>+<b>/resized/*.png`` with
   ``mask_1/`` (for ``a``) and ``mask_2/`` (for ``b``), or ``<name>/resized`` + ``mask/``.

Concept defaults: token ``"<name>"`` (``<doll>``, ``<cat_figurine>``: readable in prompts and
never a plain word), class word = the name with ``_`` as spaces. Pass ``tokens=`` /
``class_words=`` (or a manifest) to override. Every file error names the file relative
to the dataset folder, and no error quotes a file's contents: only ``MANIFEST_NAMES`` are
parsed, syntax errors give a line and column, manifest values are shown cut short or by type.
Files (and folders) whose resolved path leaves the folder being read are refused, in every
layout. Reading is CPU-only; nothing here touches a GPU.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from .concepts import Concept, ConceptSet
from .layout import (
    MAX_CONCEPTS,
    MAX_IMAGES,
    PhotoReader,
    check_count,
    default_class_word,
    default_token,
    image_listing,
    make_concepts,
    natural_key,
    shown_path,
)
from .masks import MASK_CHANNELS
from .safe_io import is_inside

PAPER_DATASET_ENV = "TEXTLOC_PAPER_DATASET"
MANIFEST_NAMES = ("textloc.json", "textloc.yaml", "textloc.yml", "manifest.json", "manifest.yaml", "manifest.yml")


def read_concepts(path: str | os.PathLike, **options) -> ConceptSet:
    """Read a concept set from a manifest file or a folder in any layout this module knows.

    ``options`` go to the chosen reader: ``tokens`` and ``class_words`` name the concepts, the
    rest say how each photo is read (``layout.PhotoReader``: ``resolution``, ``center_crop``,
    ``should_stop``, polled before each photo, ``stop.Cancelled`` when it says stop). Every layout refuses
    more than ``layout.MAX_IMAGES`` photos and ``layout.MAX_CONCEPTS`` concepts before reading
    one, and each file over ``imaging.pixel_limit(resolution)`` pixels from its header.
    """
    path = Path(path)
    if path.is_file():
        if path.name.lower() not in MANIFEST_NAMES:
            # any other file could be anything (a config holding a password): never parse it
            raise ValueError(
                f"{path.name!r} is not a concept folder or manifest: give a folder, or a manifest named "
                f"{' / '.join(MANIFEST_NAMES)}"
            )
        return read_manifest(path, **options)
    if not path.is_dir():
        raise ValueError(f"concept folder {str(path)!r} does not exist")
    manifests = [path / name for name in MANIFEST_NAMES if (path / name).is_file()]
    if len(manifests) > 1:
        raise ValueError(f"{path} has several manifests ({', '.join(m.name for m in manifests)}): keep one")
    if manifests:
        if not is_inside(path, manifests[0]):
            raise ValueError(
                f"{manifests[0].name} leads outside the dataset folder through a link: copy the file in instead"
            )
        return read_manifest(manifests[0], **options)
    if (path / "resized").is_dir():
        return read_paper_folder(path, **options)
    return read_folder(path, **options)


# ----------------------------------------------------------------------------- folder layout


def read_folder(
    folder: str | os.PathLike,
    *,
    concepts: list[Concept] | None = None,
    tokens: Mapping[str, str] | None = None,
    class_words: Mapping[str, str] | None = None,
    **reading,
) -> ConceptSet:
    """Read ``images/`` + ``masks/<concept>/`` (same file stems). ``concepts`` may define the
    concepts fully (one per ``masks/`` subfolder); otherwise defaults apply (module doc).
    ``reading``: how each photo is read, ``layout.PhotoReader``'s options (``invert_masks``,
    ``mask_channel``, ``resolution``, ``center_crop``, ``should_stop``)."""
    root = Path(folder)
    images_dir, masks_dir = root / "images", root / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise ValueError(
            f"{root} is not a concept folder: expected images/ and masks/<concept>/ subfolders, "
            f"a manifest ({' or '.join(MANIFEST_NAMES[:2])}), or the paper layout (resized/ + mask/)"
        )
    images = image_listing(images_dir, root, confine=root)
    if not images:
        raise ValueError(f"{shown_path(images_dir, root)}/ holds no images: add the photos of your concepts")
    check_count(len(images), MAX_IMAGES, "photos", f"{shown_path(images_dir, root)}/")
    names = sorted((p.name for p in masks_dir.iterdir() if p.is_dir() and not p.name.startswith(".")), key=natural_key)
    if not names:
        raise ValueError("masks/ has no concept subfolders: put each concept's masks in masks/<concept name>/")
    check_count(len(names), MAX_CONCEPTS, "concept folders", "masks/")
    if concepts is not None:
        defined = [c.name for c in concepts]
        if sorted(defined) != sorted(names):
            raise ValueError(
                f"concepts {defined} do not match the mask folders {names} under masks/: "
                "define exactly one concept per masks/ subfolder"
            )
        names = defined  # keep the caller's order
    ordered = make_concepts(names, tokens, class_words, str(root), {c.name: c for c in concepts or []})
    reader = PhotoReader(root, **reading)
    masks_of: dict[str, dict[str, Path]] = {stem: {} for stem in images}
    for name in names:
        for stem, path in image_listing(masks_dir / name, root, confine=root).items():
            if stem not in images:
                raise ValueError(
                    f"{shown_path(path, root)} has no photo images/{stem}.*: remove the mask or add its photo"
                )
            masks_of[stem][name] = path
    items = []
    for index, (stem, image_path) in enumerate(images.items()):
        if not masks_of[stem]:
            raise ValueError(
                f"image {index} ({shown_path(image_path, root)}) has no mask in any of masks/{{{','.join(names)}}}/: "
                f"add masks/<concept>/{stem}.png or remove the photo"
            )
        items.append(reader.load(index, image_path, masks_of[stem]))
    return ConceptSet(concepts=ordered, images=items)


# ----------------------------------------------------------------------------- manifest


_CONCEPT_KEYS = {"name", "token", "class_word", "init_word"}
_IMAGE_KEYS = {"file", "masks"}
_TOP_KEYS = {"concepts", "images", "invert_masks", "mask_channel"}


def quoted(value, limit: int = 32) -> str:
    """A manifest value as errors may show it: strings quoted and cut to ``limit`` characters,
    anything else by its type only (a manifest's values are never echoed at length)."""
    if not isinstance(value, str):
        return f"a {type(value).__name__}"
    return repr(value if len(value) <= limit else value[:limit] + "...")


def safe_relative_path(root: Path, raw, what: str) -> Path:
    """Resolve a path written in a manifest, refusing anything that leaves ``root``.

    Rejected: non-strings, empty strings, absolute paths (``/x``, ``C:\\x``, ``\\\\server``),
    any ``..`` component, and paths that resolve outside ``root`` through a symlink.
    Backslashes count as separators, so Windows-written manifests behave the same.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError(f"{what}: expected a file path relative to the manifest's folder, got {quoted(raw)}")
    if "\x00" in raw:
        raise ValueError(f"{what}: the path contains a NUL character")
    posix = raw.replace("\\", "/")
    pure = PurePosixPath(posix)
    if pure.is_absolute() or re.match(r"^[A-Za-z]:", posix) or ".." in pure.parts:
        raise ValueError(
            f"{what}: {quoted(raw)} points outside the dataset folder: write paths relative to "
            "the manifest's folder without '..' or a leading '/' (move the file into the folder)"
        )
    path = (root / Path(*pure.parts)).resolve()
    if not is_inside(root, path):
        raise ValueError(
            f"{what}: {quoted(raw)} leads outside the dataset folder through a link: copy the file in instead"
        )
    return path


def _load_manifest_data(path: Path) -> dict:
    text_error = None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:  # its message quotes the byte: give the position only
        raise ValueError(f"manifest {path.name} is not UTF-8 text (byte offset {error.start})") from None
    except OSError as error:
        raise ValueError(f"manifest {path.name} cannot be read ({error.strerror or type(error).__name__})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            text_error = f"line {error.lineno}, column {error.colno}: {error.msg}"
    else:
        try:
            import yaml  # PyYAML ships with ComfyUI
        except ImportError:  # pragma: no cover - depends on the installation
            raise ValueError(
                f"manifest {path.name} is YAML but PyYAML is not installed: pip install pyyaml, or use JSON"
            ) from None
        try:
            data = yaml.safe_load(text)  # safe_load: a manifest can never build Python objects
        except yaml.YAMLError as error:
            # str(error) quotes the offending line: keep only what went wrong and where
            mark = getattr(error, "problem_mark", None)
            problem = getattr(error, "problem", None) or "syntax error"
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
            text_error = f"{where}{problem}"
    if text_error is not None:
        raise ValueError(f"manifest {path.name} is not valid {path.suffix[1:].upper()}: {text_error}")
    if not isinstance(data, dict):
        raise ValueError(
            f"manifest {path.name}: expected a mapping with 'concepts' and 'images', got {type(data).__name__}"
        )
    return data


def _check_keys(entry, allowed: set[str], required: set[str], what: str) -> None:
    if not isinstance(entry, dict):
        raise ValueError(f"{what}: expected a mapping, got {quoted(entry)}")
    unknown = sorted((quoted(key, 20) for key in set(entry) - allowed), key=str)
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise ValueError(f"{what}: unknown key(s) [{shown}]; allowed: {sorted(allowed)}")
    missing = sorted(required - set(entry))
    if missing:
        raise ValueError(f"{what}: missing {missing}")


def _parse_concept(entry, index: int) -> Concept:
    what = f"manifest concepts[{index}]"
    _check_keys(entry, _CONCEPT_KEYS, {"name"}, what)
    for key in _CONCEPT_KEYS & set(entry):
        if entry[key] is not None and not isinstance(entry[key], str):
            raise ValueError(f"{what}.{key}: expected text, got {quoted(entry[key])}")
    name = entry["name"]
    if not name or not name.strip():
        raise ValueError(f"{what}.name is empty: name the concept, e.g. 'doll'")
    return Concept(
        name=name,
        token=entry.get("token") or default_token(name),
        class_word=entry.get("class_word") or default_class_word(name),
        init_word=entry.get("init_word") or None,
    )


def read_manifest(
    manifest: str | os.PathLike,
    *,
    tokens: Mapping[str, str] | None = None,
    class_words: Mapping[str, str] | None = None,
    **reading,
) -> ConceptSet:
    """Read a JSON/YAML manifest (schema in the module doc); paths are relative to its folder.
    ``tokens`` / ``class_words`` (concept name -> value) override what the manifest says;
    ``reading``: ``layout.PhotoReader``'s options but the masks' two, which the manifest sets."""
    path = Path(manifest)
    root = path.parent
    data = _load_manifest_data(path)
    _check_keys(data, _TOP_KEYS, {"concepts", "images"}, f"manifest {path.name}")
    if not isinstance(data["concepts"], list) or not data["concepts"]:
        raise ValueError(f"manifest {path.name}: 'concepts' must be a non-empty list of {{name, token, class_word}}")
    check_count(len(data["concepts"]), MAX_CONCEPTS, "concepts", f"manifest {path.name}")
    invert = data.get("invert_masks", False)
    if not isinstance(invert, bool):
        raise ValueError(f"manifest {path.name}: invert_masks must be true or false, got {quoted(invert)}")
    channel = data.get("mask_channel", "auto")
    if channel not in MASK_CHANNELS:
        raise ValueError(f"manifest {path.name}: mask_channel {quoted(channel, 20)} is not one of {MASK_CHANNELS}")
    concepts = [_parse_concept(entry, index) for index, entry in enumerate(data["concepts"])]
    concepts = make_concepts(
        [c.name for c in concepts], tokens, class_words, f"manifest {path.name}", {c.name: c for c in concepts}
    )
    if not isinstance(data["images"], list) or not data["images"]:
        raise ValueError(f"manifest {path.name}: 'images' must be a non-empty list of {{file, masks}}")
    check_count(len(data["images"]), MAX_IMAGES, "images", f"manifest {path.name}")
    known = {c.name for c in concepts}
    reader = PhotoReader(root, invert, channel, **reading)
    items = []
    for index, entry in enumerate(data["images"]):
        what = f"manifest images[{index}]"
        _check_keys(entry, _IMAGE_KEYS, {"file", "masks"}, what)
        image_path = safe_relative_path(root, entry["file"], f"{what}.file")
        masks = entry["masks"]
        if not isinstance(masks, dict) or not masks:
            raise ValueError(
                f"{what}.masks: expected {{concept name: mask file}} with at least one entry, got {quoted(masks)}"
            )
        mask_paths = {}
        for name, mask_file in masks.items():
            if name not in known:
                raise ValueError(
                    f"{what}.masks names concept {quoted(name)}, which is not in 'concepts' ({sorted(known)}): "
                    "add it to concepts or fix the name"
                )
            mask_paths[name] = safe_relative_path(root, mask_file, f"{what}.masks.{name}")
        items.append(reader.load(index, image_path, mask_paths))
    return ConceptSet(concepts=concepts, images=items)


# ----------------------------------------------------------------------------- paper layout


def find_paper_dataset(repo_root: str | os.PathLike | None = None) -> Path | None:
    """Where the paper's dataset is: ``$TEXTLOC_PAPER_DATASET``, else ``<repo>/../shared/paper-dataset``.
    None when neither exists (the data is not redistributed with the pack)."""
    configured = os.environ.get(PAPER_DATASET_ENV)
    if configured:
        return Path(configured) if Path(configured).is_dir() else None
    repo = Path(repo_root) if repo_root is not None else Path(__file__).resolve().parents[2]
    candidate = repo.parent / "shared" / "paper-dataset"
    return candidate if candidate.is_dir() else None


def paper_concept_folder(root: str | os.PathLike, which: str) -> Path:
    """The folder of pair ``"bucket+doll"`` (multi_concept/) or concept ``"doll"`` (single_concept/)."""
    root = Path(root)
    if "/" in which or "\\" in which or which in ("", ".", ".."):
        raise ValueError(f"paper dataset entry {which!r}: give a folder name like 'bucket+doll' or 'doll'")
    folder = root / ("multi_concept" if "+" in which else "single_concept") / which
    if not folder.is_dir():
        available = sorted(
            p.name
            for sub in ("multi_concept", "single_concept")
            if (root / sub).is_dir()
            for p in (root / sub).iterdir()
            if p.is_dir()
        )
        raise ValueError(f"paper dataset {root} has no {which!r}; available: {available}")
    return folder


def paper_prompts(root: str | os.PathLike, which: str, tokens: list[str] | None = None) -> list[str]:
    """The 10 evaluation prompts of ``which`` (``prompts/<which>.txt``), one a line, each ``{}``
    being where an identifier token goes; with ``tokens`` the slots are filled in order."""
    path = Path(root) / "prompts" / f"{which}.txt"
    if not path.is_file():
        raise ValueError(f"paper dataset has no prompts/{which}.txt")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if tokens is None:
        return lines
    filled = []
    for line in lines:
        if line.count("{}") != len(tokens):
            raise ValueError(f"prompts/{which}.txt: {line!r} has {line.count('{}')} slot(s) for {len(tokens)} token(s)")
        filled.append(line.format(*tokens))
    return filled


def read_paper_folder(
    folder: str | os.PathLike,
    *,
    tokens: Mapping[str, str] | None = None,
    class_words: Mapping[str, str] | None = None,
    **reading,
) -> ConceptSet:
    """Read one folder of the paper's layout: ``<a>+<b>/`` (``resized/``, ``mask_1/``, ``mask_2/``,
    ... one mask folder per ``+`` part) or ``<name>/`` (``resized/``, ``mask/``).

    Concepts are named after the folder parts. Every photo must have every mask (the
    published data is complete; a gap means a broken copy). ``reading``: ``layout.PhotoReader``'s
    options (``resolution``, ``center_crop``, ``should_stop``).
    """
    root = Path(folder)
    if not (root / "resized").is_dir():
        raise ValueError(f"{root} is not in the paper layout: it has no resized/ folder")
    names = [part for part in root.name.split("+")]
    if any(not name for name in names):
        raise ValueError(f"{root.name!r}: concept names are the parts between '+', none may be empty")
    if len(names) == 1:
        mask_dirs = {names[0]: root / "mask"}
    else:
        mask_dirs = {name: root / f"mask_{position}" for position, name in enumerate(names, start=1)}
    for name, mask_dir in mask_dirs.items():
        if not mask_dir.is_dir():
            raise ValueError(f"{root.name}: the masks of {name!r} should be in {mask_dir.name}/, which is missing")
    concepts = make_concepts(names, tokens, class_words, root.name)
    base = root.parent  # errors and sources read "bucket+doll/mask_1/x.png"
    photos = image_listing(root / "resized", base, confine=root)
    if not photos:
        raise ValueError(f"{root.name}/resized/ holds no photos")
    check_count(len(photos), MAX_IMAGES, "photos", f"{root.name}/resized/")
    listings = {name: image_listing(mask_dir, base, confine=root) for name, mask_dir in mask_dirs.items()}
    for name, masks in listings.items():
        extra = sorted(set(masks) - set(photos))
        missing = sorted(set(photos) - set(masks))
        if extra or missing:
            detail = (
                f"{shown_path(masks[extra[0]], base)} has no photo in resized/"
                if extra
                else f"{shown_path(photos[missing[0]], base)} has no mask in {mask_dirs[name].name}/"
            )
            raise ValueError(
                f"{root.name}: {len(photos)} photos but {len(masks)} masks of {name!r}: {detail}; "
                "every photo needs one mask per concept with the same file name"
            )
    reader = PhotoReader(base, **reading)
    items = [
        reader.load(index, path, {name: listings[name][stem] for name in names})
        for index, (stem, path) in enumerate(photos.items())
    ]
    return ConceptSet(concepts=concepts, images=items)


def read_paper_dataset(root: str | os.PathLike, which: str, **options) -> ConceptSet:
    """``read_paper_folder`` of pair or concept ``which`` in the dataset at ``root``."""
    return read_paper_folder(paper_concept_folder(root, which), **options)
