"""TextLoc Score Images: CLIP-I, CLIP-T, KID and attention IoU of generated images, in a graph.

A thin node: the scores come from ``textloc_core.evaluation.scoring.score_images`` (the same code the
TinyWorld table uses). It is an output node so a graph can end in it: the markdown report is
written to ComfyUI's output folder and shown in the UI, and the numbers are outputs too.
"""

from __future__ import annotations

from comfy_api.latest import io

from ..textloc_core.evaluation import scoring
from .comfy_cancel import end_if_cancelled, prompt_ends_on_stop, stop_requested
from .read_access import readable_path
from .schema import NodeText, named

SCORE_IMAGES_DESCRIPTION = (
    "CLIP-I, CLIP-T (identifier tokens removed from the prompt), KID and, given attention maps and "
    "a target mask, attention IoU. Writes a markdown report to the output folder."
)
SCORE_OUTPUTS = ("clip_i", "clip_t", "kid", "iou")
"""The scores Score Images outputs as FLOATs, after the report, in this order."""
SCORE_TOOLTIPS = {
    "images": "Generated images to score.",
    "references": "Reference images of the concept (CLIP-I and KID compare against these).",
    "prompt": "The prompt the images were generated from; <...> identifier tokens are removed for CLIP-T.",
    "feature_model": "'tinyworld' (TinyWorld's own CLIP) or a local CLIP folder (e.g. clip-vit-large-patch14 as the paper): relative to ComfyUI's input folder, or inside a folder the server owner lists in TEXTLOC_READ_ROOTS; safetensors weights only; nothing is downloaded.",
    "kid_subset_size": "KID subset size (paper: 5); KID is reported n/a when either set has fewer images.",
    "filename_prefix": "Where the markdown report goes, under ComfyUI's output folder.",
    "attention_maps": "Attention maps of the concept token (e.g. TextLoc Attention Preview 'maps'); with target_masks gives IoU.",
    "target_masks": "Where the concept really is: one mask per map, or one for all.",
    "threshold": "Cut on the min-max normalised map for IoU.",
}
"""What each Score Images input does, as its tooltip in the UI says."""
SCORE_NODE = NodeText("TextLocScoreImages", "TextLoc Score Images", SCORE_IMAGES_DESCRIPTION, SCORE_TOOLTIPS)

#: weight files that need unpickling (transformers would torch.load them)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def load_feature_model(choice: str):
    """``scoring.load_feature_model`` for 'tinyworld' or a CLIP folder nodes may read
    (``read_access``): symlinks leading out are refused, pickle-only weights too (never
    unpickled), and loading errors other than the core's own messages name no file content."""
    text = (choice or "").strip()
    if text.lower() == "tinyworld" or not text:
        return scoring.load_feature_model(text)
    folder = readable_path(text, "feature_model")
    if not folder.is_dir():
        raise ValueError(f"feature_model: {text!r} is a file; give the folder of a local CLIP checkpoint")
    pickled = {p.parent for p in folder.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file()}
    if any(not any(directory.glob("*.safetensors")) for directory in pickled):
        raise ValueError(
            f"feature_model: {text!r} holds weights only as pickle files ({', '.join(PICKLE_SUFFIXES)}), which are "
            "never loaded; save the checkpoint with safetensors (save_pretrained(..., safe_serialization=True))"
        )
    try:
        return scoring.load_feature_model(str(folder))
    except Exception as error:
        if isinstance(error, ValueError) and str(error).startswith(("CLIP directory", "feature_model")):
            # the core's own messages: the folder (named as the user typed it) and the fix, no file content
            raise ValueError(str(error).replace(str(folder), text)) from None
        # One message whatever went wrong: the exception's type or text would tell what lies at
        # the paths the folder's files name (missing, a folder, a pickle...).
        raise ValueError(
            f"feature_model: {text!r} could not be loaded as a local CLIP folder; keep the files as transformers "
            "saved them (config.json, safetensors weights, tokenizer files)"
        ) from None


def _write_report(report: str, filename_prefix: str) -> dict:
    """Save ``report`` as <output>/<prefix>_NNNNN_.md; returns ComfyUI's file record."""
    import folder_paths

    folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
        filename_prefix, folder_paths.get_output_directory()
    )
    name = f"{filename}_{counter:05}_.md"
    with open(f"{folder}/{name}", "w", encoding="utf-8") as handle:
        handle.write(report)
    return {"filename": name, "subfolder": subfolder, "type": "output"}


def _score_inputs() -> list:
    """Score Images' inputs: the images, references, prompt, feature model, KID, report and IoU."""
    return [
        SCORE_NODE.input(io.Image, "images"),
        SCORE_NODE.input(io.Image, "references"),
        SCORE_NODE.input(io.String, "prompt", default="a <tw1> star on grass", multiline=True),
        SCORE_NODE.input(io.String, "feature_model", default="tinyworld"),
        SCORE_NODE.input(io.Int, "kid_subset_size", default=5, min=2, max=1000),
        SCORE_NODE.input(io.String, "filename_prefix", default="textloc/scores"),
        SCORE_NODE.input(io.Mask, "attention_maps", optional=True),
        SCORE_NODE.input(io.Mask, "target_masks", optional=True),
        SCORE_NODE.input(io.Float, "threshold", default=0.5, min=0.0, max=1.0, step=0.05, optional=True),
    ]


class ScoreImages(io.ComfyNode):
    """Score generated images against reference images of the concept."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return SCORE_NODE.schema(
            outputs=[named(io.String, "report"), *(named(io.Float, key) for key in SCORE_OUTPUTS)],
            is_output_node=True,
            inputs=_score_inputs(),
        )

    @classmethod
    def execute(
        cls,
        images,
        references,
        prompt,
        feature_model,
        kid_subset_size,
        filename_prefix,
        attention_maps=None,
        target_masks=None,
        threshold=0.5,
    ) -> io.NodeOutput:
        end_if_cancelled()
        model = load_feature_model(feature_model)
        end_if_cancelled()
        with prompt_ends_on_stop():  # the scorer polls Cancel before every chunk of images
            scores = scoring.score_images(
                model,
                images.movedim(-1, 1).float(),
                references.movedim(-1, 1).float(),
                prompt,
                kid_subset_size=kid_subset_size,
                attention_maps=attention_maps,
                target_masks=target_masks,
                threshold=threshold,
                should_stop=stop_requested,
            )
        report = scoring.score_report(
            scores, n_images=len(images), n_references=len(references), prompt=prompt, kid_subset_size=kid_subset_size
        )
        end_if_cancelled()
        record = _write_report(report, filename_prefix)
        numbers = tuple(float(scores[k]) for k in SCORE_OUTPUTS)
        # a dict ui: the report file record rides along under a key of its own
        return io.NodeOutput(report, *numbers, ui={"text": [report], "reports": [record]})
