"""Concept-set nodes: ComfyUI IMAGE + MASK, a folder on disk, or TinyWorld -> TEXTLOC_CONCEPTS.

A TEXTLOC_CONCEPTS value is a ``textloc_core.data.concepts.ConceptSet``. Every node validates
what it builds (counts, sizes, empty or full masks, names, duplicate tokens) before any
model is touched, with errors naming the input and the fix.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from comfy_api.latest import io

from ..textloc_core.data.concepts import Concept, ConceptSet
from ..textloc_core.data.tokens import check_token_text
from ..textloc_core.data.validation import validate_concept_set
from .comfy_cancel import prompt_ends_on_stop, stop_requested
from .paths import check_length
from .read_access import READ_ROOTS_ENV, check_readable, readable_path
from .schema import CONCEPTS, NodeText, named

CONCEPT_FROM_MASK_DESCRIPTION = (
    "Define a concept to learn from photos and masks; chain several to learn concepts that appear together."
)
CONCEPT_FOLDER_DESCRIPTION = (
    "Load concepts from a folder: images/ + masks/<concept>/, a textloc.json manifest, or the paper dataset layout."
)
CONCEPT_FROM_MASK_TOOLTIPS = {
    "images": "Photos showing the concept (a batch; all the same size).",
    "masks": "One mask per photo, white where the concept is (LoadImage's MASK, the mask editor, or any mask node).",
    "name": "Short name of the concept, used in file names (letters, digits, _ -).",
    "token": "New identifier word written in prompts for this concept; must not be an existing word.",
    "class_word": "The class the base model already knows (prompts say 'a <token> <class_word>').",
    "init_word": "Word whose embedding the token starts from (empty: the class word); a word of several vocabulary pieces starts from their mean.",
    "invert_mask": "Flip the masks (use when the concept is black and the background white).",
    "concepts": "Concepts defined so far; this concept is added (masks merge when the photos are the same).",
}
"""What each Concept From Mask input does, as its tooltip in the UI says."""
FROM_MASK_NODE = NodeText(
    "TextLocConceptFromMask", "TextLoc Concept From Mask", CONCEPT_FROM_MASK_DESCRIPTION, CONCEPT_FROM_MASK_TOOLTIPS
)
CONCEPT_FOLDER_TOOLTIPS = {
    "folder": "Folder path relative to ComfyUI's input folder (absolute paths only inside folders the server owner lists in TEXTLOC_READ_ROOTS), or paper:<pair> for the paper dataset (e.g. paper:bucket+doll).",
    "resolution": "Training side in pixels (photos are resized and centre-cropped); 0 keeps their own size.",
    "tokens": "Identifier tokens per concept, e.g. 'doll=<doll1>, bucket=<bucket1>' (default '<name>').",
    "class_words": "Class words per concept, e.g. 'cat_figurine=figurine' (default: the name).",
}
"""What each Concept Folder input does, as its tooltip in the UI says."""
FOLDER_NODE = NodeText(
    "TextLocConceptFolder", "TextLoc Concept Folder", CONCEPT_FOLDER_DESCRIPTION, CONCEPT_FOLDER_TOOLTIPS
)


def concepts_from_mask(
    images, masks, name, token, class_word, init_word="", invert_mask=False, concepts=None
) -> ConceptSet:
    """One concept from an IMAGE batch (B,H,W,3) and a MASK batch (B,H,W), optionally added to
    ``concepts``: on the same photos its masks merge into them, on other photos the photos are
    appended (a multi-concept set may mix both)."""
    name, token, class_word, init_word = name.strip(), token.strip(), class_word.strip(), init_word.strip()
    check_token_text(token)
    check_length(name, "name")  # file names are made from it: refused now, not after training
    if not class_word:
        raise ValueError(f"class_word of concept {name!r} is empty: give the class the base model knows, e.g. 'doll'")
    concept = Concept(name=name, token=token, class_word=class_word, init_word=init_word or None)
    single = ConceptSet.from_tensors(images, masks, concept, invert=invert_mask)
    if concepts is None:
        result = single
    elif concepts.same_photos(single):
        result = ConceptSet.merge(concepts, single)
    else:
        result = ConceptSet(list(concepts.concepts) + [concept], list(concepts.images) + list(single.images))
    validate_concept_set(result)
    return result


class ConceptFromMask(io.ComfyNode):
    """IMAGE + MASK (from LoadImage's alpha or the mask editor) -> one concept."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return FROM_MASK_NODE.schema(
            outputs=[named(CONCEPTS, "concepts")],
            inputs=[
                FROM_MASK_NODE.input(io.Image, "images"),
                FROM_MASK_NODE.input(io.Mask, "masks"),
                FROM_MASK_NODE.input(io.String, "name", default="doll"),
                FROM_MASK_NODE.input(io.String, "token", default="<doll1>"),
                FROM_MASK_NODE.input(io.String, "class_word", default="doll"),
                FROM_MASK_NODE.input(io.String, "init_word", default="", optional=True),
                FROM_MASK_NODE.input(io.Boolean, "invert_mask", default=False, optional=True),
                FROM_MASK_NODE.input(CONCEPTS, "concepts", optional=True),
            ],
        )

    @classmethod
    def execute(
        cls, images, masks, name, token, class_word, init_word="", invert_mask=False, concepts=None
    ) -> io.NodeOutput:
        return io.NodeOutput(
            concepts_from_mask(images, masks, name, token, class_word, init_word, invert_mask, concepts)
        )


def _parse_pairs(text: str, what: str) -> dict[str, str]:
    """'doll=<doll1>, bucket=<bucket1>' -> {'doll': '<doll1>', 'bucket': '<bucket1>'}."""
    out = {}
    for part in filter(None, (p.strip() for p in text.replace("\n", ",").split(","))):
        if "=" not in part:
            raise ValueError(f"{what}: {part!r} should look like name=value, e.g. 'doll=<doll1>'")
        key, value = (s.strip() for s in part.split("=", 1))
        out[key] = value
    return out


def resolve_folder(folder: str) -> Path:
    """A concept folder: 'paper:<pair or concept>' (the paper dataset), or a path relative to
    ComfyUI's input folder (or absolute, inside a folder the server owner lists in
    $TEXTLOC_READ_ROOTS), resolved and checked by ``read_access`` (symlinks inside included).
    A file must be a manifest by name (``readers.MANIFEST_NAMES``): no other file is parsed."""
    from ..textloc_core.data import readers

    folder = folder.strip()
    if folder.startswith("paper:"):
        root = readers.find_paper_dataset()
        try:
            root = check_readable(root, "folder", folder) if root is not None else None
        except ValueError:
            root = None
        if root is None:  # one message whether the dataset is missing or not readable
            raise ValueError(
                f"folder: {folder!r} needs the paper dataset, which this server does not offer: the server owner "
                f"sets ${readers.PAPER_DATASET_ENV} to its folder and lists that folder in ${READ_ROOTS_ENV} "
                "(it is not shipped with the pack)"
            )
        return check_readable(readers.paper_concept_folder(root, folder[len("paper:") :]), "folder", folder)
    path = readable_path(folder, "folder")
    if path.is_file() and path.name.lower() not in readers.MANIFEST_NAMES:
        raise ValueError(
            f"folder: {folder!r} is a file but not a manifest; give the concept folder, or a manifest named "
            f"{', '.join(readers.MANIFEST_NAMES)}"
        )
    return path


def read_concept_folder(path: Path, shown: str, **options) -> ConceptSet:
    """``readers.read_concepts`` with a manifest's syntax errors told by line and column only
    (the YAML parser's own message quotes the offending line, and file contents never go into
    an error: the server's files are not the user's), and the folder named as ``shown``."""
    from ..textloc_core.data import readers

    try:
        return readers.read_concepts(path, **options)
    except ValueError as error:
        message = str(error)
        if not message.startswith("manifest ") or not re.search(r" is not valid | cannot be read as UTF-8", message):
            if str(path) not in message:
                raise
            # name the folder as the user typed it: the server's own folders are not theirs to see
            raise ValueError(message.replace(str(path), shown)) from None
        marks = re.findall(r"line (\d+), column (\d+)", message)  # the last is where the parser failed
        at = f" at line {marks[-1][0]}, column {marks[-1][1]}" if marks else ""
        manifest = message.split(" ", 2)[1]
        raise ValueError(
            f"folder: {shown!r}: manifest {manifest} is not valid UTF-8 JSON or YAML{at}; fix its syntax "
            "(docs/concept-data.md shows the layout)"
        ) from None


class ConceptFolder(io.ComfyNode):
    """A folder of photos and masks (images/ + masks/<concept>/, a manifest, or the paper's layout)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return FOLDER_NODE.schema(
            outputs=[named(CONCEPTS, "concepts"), named(io.Image, "images")],
            inputs=[
                FOLDER_NODE.input(io.String, "folder", default="paper:bucket+doll"),
                FOLDER_NODE.input(io.Int, "resolution", default=512, min=0, max=2048, step=8),
                FOLDER_NODE.input(io.String, "tokens", default="", optional=True),
                FOLDER_NODE.input(io.String, "class_words", default="", optional=True),
            ],
        )

    @classmethod
    def execute(cls, folder, resolution, tokens="", class_words="") -> io.NodeOutput:
        path = resolve_folder(folder)
        # the readers poll Cancel before each photo
        options = {"resolution": resolution or None, "should_stop": stop_requested}
        if tokens.strip():
            options["tokens"] = _parse_pairs(tokens, "tokens")
        if class_words.strip():
            options["class_words"] = _parse_pairs(class_words, "class_words")
        with prompt_ends_on_stop():
            concept_set = read_concept_folder(path, folder.strip(), **options)
        validate_concept_set(concept_set, resolution=resolution or None)
        return io.NodeOutput(concept_set, preview_batch(concept_set))


def preview_batch(concept_set: ConceptSet) -> torch.Tensor:
    """The set's photos as an IMAGE batch (photos of other sizes are resized to the first's)."""
    first = concept_set.images[0].image
    pictures = []
    for item in concept_set.images:
        image = item.image
        if image.shape != first.shape:
            image = torch.nn.functional.interpolate(
                image[None], size=tuple(first.shape[-2:]), mode="bilinear", align_corners=False
            )[0]
        pictures.append(image)
    return torch.stack(pictures).movedim(1, -1).clamp(0, 1)
