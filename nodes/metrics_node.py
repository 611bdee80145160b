"""TextLoc Score Images: CLIP-I, CLIP-T, KID and attention IoU of generated images, in a graph.

A thin node: the scores come from ``textloc_core.evaluation.score_images`` (the same code the
TinyWorld table uses). It is an output node so a graph can end in it: the markdown report is
written to ComfyUI's output folder and shown in the UI, and the numbers are outputs too.
"""

from __future__ import annotations

from ..textloc_core import evaluation

CATEGORY = "textloc"


def _write_report(report: str, filename_prefix: str) -> dict:
    """Save ``report`` as <output>/<prefix>_NNNNN_.md; returns ComfyUI's file record."""
    import folder_paths

    folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
        filename_prefix, folder_paths.get_output_directory())
    name = f"{filename}_{counter:05}_.md"
    with open(f"{folder}/{name}", "w", encoding="utf-8") as handle:
        handle.write(report)
    return {"filename": name, "subfolder": subfolder, "type": "output"}


class ScoreImages:
    """Score generated images against reference images of the concept."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING", "FLOAT", "FLOAT", "FLOAT", "FLOAT")
    RETURN_NAMES = ("report", "clip_i", "clip_t", "kid", "iou")
    FUNCTION = "score"
    OUTPUT_NODE = True
    DESCRIPTION = ("CLIP-I, CLIP-T (identifier tokens removed from the prompt), KID and, given attention maps and "
                   "a target mask, attention IoU. Writes a markdown report to the output folder.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "Generated images to score."}),
                "references": ("IMAGE", {"tooltip": "Reference images of the concept (CLIP-I and KID compare against these)."}),
                "prompt": ("STRING", {"default": "a <tw1> star on grass", "multiline": True, "tooltip": "The prompt the images were generated from; <...> identifier tokens are removed for CLIP-T."}),
                "feature_model": ("STRING", {"default": "tinyworld", "tooltip": "'tinyworld' (TinyWorld's own CLIP) or the path of a local CLIP folder (e.g. clip-vit-large-patch14 as the paper); nothing is downloaded."}),
                "kid_subset_size": ("INT", {"default": 5, "min": 2, "max": 1000, "tooltip": "KID subset size (paper: 5); KID is reported n/a when either set has fewer images."}),
                "filename_prefix": ("STRING", {"default": "textloc/scores", "tooltip": "Where the markdown report goes, under ComfyUI's output folder."}),
            },
            "optional": {
                "attention_maps": ("MASK", {"tooltip": "Attention maps of the concept token (e.g. TextLoc Attention Preview 'maps'); with target_masks gives IoU."}),
                "target_masks": ("MASK", {"tooltip": "Where the concept really is: one mask per map, or one for all."}),
                "threshold": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": "Cut on the min-max normalised map for IoU."}),
            },
        }

    def score(self, images, references, prompt, feature_model, kid_subset_size, filename_prefix,
              attention_maps=None, target_masks=None, threshold=0.5):
        model = evaluation.load_feature_model(feature_model)
        scores = evaluation.score_images(
            model, images.movedim(-1, 1).float(), references.movedim(-1, 1).float(), prompt,
            kid_subset_size=kid_subset_size, attention_maps=attention_maps, target_masks=target_masks,
            threshold=threshold)
        report = evaluation.score_report(scores, n_images=len(images), n_references=len(references),
                                         prompt=prompt, kid_subset_size=kid_subset_size)
        record = _write_report(report, filename_prefix)
        numbers = tuple(float(scores[k]) for k in ("clip_i", "clip_t", "kid", "iou"))
        return {"ui": {"text": [report], "reports": [record]}, "result": (report, *numbers)}
