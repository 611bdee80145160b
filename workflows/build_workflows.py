"""Write the shipped workflows, each as a UI-format graph and its API-format twin.

One graph definition per workflow (below) produces both files, so they never drift: the
UI file (drag into ComfyUI, or pick it in the template browser, which serves this folder)
and ``*_api.json`` (POST /prompt; used by the integration tests). Widget order, optional
widgets and the extra "control after generate" value of seed widgets are read from the
node classes themselves (V1 INPUT_TYPES, or the V1 view ComfyUI gives of a V3 schema), so a
changed input shows up here on the next run.

Run from anywhere with ComfyUI importable:  python workflows/build_workflows.py [--comfyui DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACK_ROOT = HERE.parent
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
COMBO = "COMBO"  # a V3 combo: ("COMBO", {"options": [...]}) where V1 has ([...], {...})
DISPLAY: dict[str, str] = {}


def _module_nodes(module) -> tuple[dict, dict]:
    """(classes, display names) a node module gives ComfyUI, as ComfyUI's load_custom_node
    takes them: its V1 NODE_CLASS_MAPPINGS, else its V3 comfy_entrypoint's node list."""
    if getattr(module, "NODE_CLASS_MAPPINGS", None) is not None:
        return dict(module.NODE_CLASS_MAPPINGS), dict(getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) or {})

    async def node_list():
        return await (await module.comfy_entrypoint()).get_node_list()

    classes, display = {}, {}
    for cls in asyncio.run(node_list()):
        schema = cls.GET_SCHEMA()
        classes[schema.node_id] = cls
        if schema.display_name is not None:
            display[schema.node_id] = schema.display_name
    return classes, display


def _load_classes(comfy_dir: Path) -> dict:
    """Stock node classes we use plus the pack's, imported the way ComfyUI imports them."""
    sys.path.insert(0, str(comfy_dir))
    from comfy.cli_args import args

    args.cpu = True
    import comfy_extras.nodes_mask

    import nodes as comfy_nodes

    spec = importlib.util.spec_from_file_location(
        "textloc", PACK_ROOT / "__init__.py", submodule_search_locations=[str(PACK_ROOT)]
    )
    pack = importlib.util.module_from_spec(spec)
    sys.modules["textloc"] = pack
    spec.loader.exec_module(pack)
    classes = {}
    for module, titles in ((comfy_nodes, True), (comfy_extras.nodes_mask, False), (pack, True)):
        module_classes, module_display = _module_nodes(module)
        classes.update(module_classes)
        if titles:  # stock mask nodes keep their class name as title, as shipped
            DISPLAY.update(module_display)
    return classes


@dataclass
class Node:
    id: int
    type: str
    widgets: dict
    inputs: dict  # input name -> (Node, output slot)
    pos: tuple[int, int]
    title: str | None = None
    size: tuple[int, int] = (320, 200)


@dataclass
class Graph:
    name: str
    nodes: list[Node] = field(default_factory=list)

    def add(self, type_, pos, widgets=None, inputs=None, title=None, size=(320, 200)) -> Node:
        node = Node(len(self.nodes) + 1, type_, widgets or {}, inputs or {}, pos, title, size)
        self.nodes.append(node)
        return node


def _input_specs(cls) -> list[tuple[str, object, dict]]:
    spec = cls.INPUT_TYPES()
    out = []
    for group in ("required", "optional"):
        for name, value in (spec.get(group) or {}).items():
            type_ = value[0]
            opts = value[1] if len(value) > 1 else {}
            out.append((name, type_, opts))
    return out


def _is_widget(type_, opts) -> bool:
    return (isinstance(type_, list) or type_ == COMBO or type_ in WIDGET_TYPES) and not opts.get("forceInput")


def _slots(cls) -> list[str]:
    """Input slot names of a node in the UI: its non-widget inputs, in declaration order."""
    return [n for n, t, o in _input_specs(cls) if not _is_widget(t, o)]


def _has_control(name, type_, opts) -> bool:
    # the frontend adds a "control after generate" widget to INT seeds (and to inputs asking for it)
    return bool(opts.get("control_after_generate")) or (type_ == "INT" and name in ("seed", "noise_seed"))


def _default(type_, opts):
    if "default" in opts:
        return opts["default"]
    if isinstance(type_, list):
        return type_[0]
    if type_ == COMBO:
        return opts["options"][0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}[type_]


def _widget_value(node: Node, name: str, type_, opts):
    """The graph's value of a widget, else its default (a combo with no options, e.g. an empty
    input folder, has none: the graph must give it)."""
    return node.widgets[name] if name in node.widgets else _default(type_, opts)


def to_api(graph: Graph, classes: dict) -> dict:
    prompt = {}
    for node in graph.nodes:
        if node.type == "Note":
            continue
        inputs = {}
        for name, type_, opts in _input_specs(classes[node.type]):
            if name in node.inputs:
                src, slot = node.inputs[name]
                inputs[name] = [str(src.id), slot]
            elif _is_widget(type_, opts):
                inputs[name] = _widget_value(node, name, type_, opts)
        unknown = set(node.widgets) - {n for n, _, _ in _input_specs(classes[node.type])}
        if unknown:
            raise ValueError(f"{graph.name}: node {node.id} ({node.type}) has no inputs {sorted(unknown)}")
        prompt[str(node.id)] = {
            "class_type": node.type,
            "inputs": inputs,
            "_meta": {"title": node.title or DISPLAY.get(node.type, node.type)},
        }
    return prompt


def to_ui(graph: Graph, classes: dict) -> dict:
    links, ui_nodes = [], []
    out_links: dict[tuple[int, int], list[int]] = {}
    for node in graph.nodes:
        for name, (src, slot) in node.inputs.items():
            link_id = len(links) + 1
            type_ = classes[src.type].RETURN_TYPES[slot]
            target_slot = _slots(classes[node.type]).index(name)
            links.append([link_id, src.id, slot, node.id, target_slot, type_])
            out_links.setdefault((src.id, slot), []).append(link_id)
    link_of = {(link[3], link[4]): link[0] for link in links}
    for order, node in enumerate(graph.nodes):
        entry = {
            "id": node.id,
            "type": node.type,
            "pos": list(node.pos),
            "size": list(node.size),
            "flags": {},
            "order": order,
            "mode": 0,
            "properties": {"Node name for S&R": node.type},
        }
        if node.type == "Note":
            entry["widgets_values"] = [node.widgets["text"]]
            entry["inputs"], entry["outputs"] = [], []
        else:
            cls = classes[node.type]
            specs = _input_specs(cls)
            types = {n: t for n, t, _ in specs}
            entry["inputs"] = [
                {"name": n, "type": types[n], "link": link_of.get((node.id, i))} for i, n in enumerate(_slots(cls))
            ]
            names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
            entry["outputs"] = [
                {"name": names[i], "type": t, "links": out_links.get((node.id, i), []), "slot_index": i}
                for i, t in enumerate(cls.RETURN_TYPES)
            ]
            values = []
            for name, type_, opts in specs:
                if _is_widget(type_, opts) and name not in node.inputs:
                    values.append(_widget_value(node, name, type_, opts))
                    if _has_control(name, type_, opts):
                        values.append("fixed")
            entry["widgets_values"] = values
        if node.title:
            entry["title"] = node.title
        ui_nodes.append(entry)
    return {
        "last_node_id": len(graph.nodes),
        "last_link_id": len(links),
        "nodes": ui_nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}},
        "version": 0.4,
    }


# ----------------------------------------------------------------------------- the nodes they use
SAMPLE = {"seed": 0, "steps": 20, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal"}


def note(g: Graph, text: str, size: tuple[int, int]) -> Node:
    """The workflow's explanation, top left."""
    return g.add("Note", (20, 20), {"text": text}, size=size)


def tinyworld_loader(g: Graph, pos) -> Node:
    """TextLoc TinyWorld Loader with the shipped weights: MODEL, CLIP, VAE."""
    return g.add("TextLocTinyWorldLoader", pos, {"seed": 0, "use_shipped_weights": True})


def tinyworld_photos(g: Graph, token: str) -> Node:
    """Five TinyWorld photos of the dotted star beside its companion, with masks, below the loader."""
    return g.add(
        "TextLocTinyWorldConceptSet", (20, 540), {"concept": "dotstar", "token": token, "images": 5, "seed": 0}
    )


def train(g: Graph, pos, model: Node, concepts: Node, size=(340, 420), **widgets) -> Node:
    """TextLoc Train with hard guidance, no prior images and seed 0 on ``model``'s MODEL, CLIP and
    VAE (outputs 0, 1, 2); ``widgets`` give the rest."""
    widgets = {"guidance": "hard", "prior_images": 0, "seed": 0, **widgets}
    inputs = {"model": (model, 0), "clip": (model, 1), "vae": (model, 2), "concepts": (concepts, 0)}
    return g.add("TextLocTrain", pos, widgets, inputs, size=size)


def apply_adapter(g: Graph, pos, model: Node, adapter: Node | None = None, adapter_file: str = "(none)") -> Node:
    """TextLoc Apply Adapter at strength 1 on ``model``'s MODEL and CLIP: ``adapter_file``, or the
    ADAPTER a Train node gives."""
    inputs = {"model": (model, 0), "clip": (model, 1)}
    if adapter is not None:
        inputs["adapter"] = (adapter, 0)
    return g.add("TextLocApplyAdapter", pos, {"adapter_file": adapter_file, "strength": 1.0}, inputs)


def attention_preview(g: Graph, pos, prompt: str, model: Node, vae: Node, title=None, **widgets) -> Node:
    """TextLoc Attention Preview of ``prompt`` (no negative, ``SAMPLE``'s sampling, 64 px) on the
    adapted ``model``'s MODEL and CLIP and ``vae``'s VAE (output 2); ``widgets`` replace or add."""
    values = {"prompt": prompt, "negative": "", "tokens": "", **SAMPLE, "width": 64, "height": 64, **widgets}
    inputs = {"model": (model, 0), "clip": (model, 1), "vae": (vae, 2)}
    return g.add("TextLocAttentionPreview", pos, values, inputs, title=title, size=(360, 600))


def save_image(g: Graph, pos, filename_prefix: str, images: tuple[Node, int], title: str) -> Node:
    return g.add("SaveImage", pos, {"filename_prefix": filename_prefix}, {"images": images}, title=title)


# ----------------------------------------------------------------------------- the workflows


def train_multi_concept() -> Graph:
    g = Graph("train_multi_concept")
    note(
        g,
        "Train one adapter on two concepts that appear together, each with its own mask.\n"
        "The photos and masks here come from TinyWorld so the graph runs anywhere; for your own photos use "
        "LoadImage (paint each object in the mask editor, one LoadImage per mask) or TextLoc Concept Folder (e.g. "
        "paper:bucket+doll), and Load Checkpoint (SD1.5) instead of the TinyWorld loader.\n"
        "Outputs: models/textloc/tinyworld_pair.safetensors, models/loras/textloc/tinyworld_pair.safetensors, and "
        "embeddings embedding:textloc/tinyworld_pair/dotstar and .../bluecircle (the pack ships an adapter trained "
        "exactly so: scripts/build_shipped_adapter.py). Training other photos under the same name needs overwrite "
        "on.",
        size=(420, 240),
    )
    loader = tinyworld_loader(g, (20, 300))
    photos = tinyworld_photos(g, "<dotstar1>")
    star = g.add(
        "TextLocConceptFromMask",
        (440, 300),
        {"name": "dotstar", "token": "<dotstar1>", "class_word": "star"},
        {"images": (photos, 1), "masks": (photos, 2)},
    )
    circle = g.add(
        "TextLocConceptFromMask",
        (440, 640),
        {"name": "bluecircle", "token": "<circle1>", "class_word": "circle"},
        {"images": (photos, 1), "masks": (photos, 3), "concepts": (star, 0)},
    )
    train(
        g,
        (860, 300),
        loader,
        circle,
        steps=200,
        learning_rate=1e-4,
        batch=2,
        checkpoint_every=50,
        adapter_name="tinyworld_pair",
        map_levels="all",  # TinyWorld's chosen recipe (docs/results.md, round 2)
    )
    return g


def generate_with_adapter() -> Graph:
    g = Graph("generate_with_adapter")
    note(
        g,
        "Load a trained adapter, generate with its tokens, and preview where each token attends.\n"
        "adapter_file: tinyworld_pair.safetensors ships with the pack (textloc_core/tinyworld/adapters, trained by "
        "train_multi_concept as shipped); running train_multi_concept writes your own into models/textloc, which "
        "then takes its place. Pick any other adapter in the list.\n"
        "Tokens work straight in prompts: 'a <dotstar1> star'. Stock nodes can use the same adapter too: "
        "LoraLoaderModelOnly (textloc/<name>.safetensors) + 'embedding:textloc/<name>/<concept>' in CLIPTextEncode.",
        size=(420, 260),
    )
    loader = tinyworld_loader(g, (20, 260))
    apply = apply_adapter(g, (440, 300), loader, adapter_file="tinyworld_pair.safetensors")
    prompt = "a <dotstar1> star and a <circle1> circle on sand"
    pos = g.add("CLIPTextEncode", (860, 40), {"text": prompt}, {"clip": (apply, 1)}, size=(400, 240))
    neg = g.add("CLIPTextEncode", (860, 330), {"text": ""}, {"clip": (apply, 1)}, size=(400, 240))
    # EmptyLatentImage assumes a VAE factor of 8; TinyWorld's is 4, so 128 here decodes to 64 px
    latent = g.add(
        "EmptyLatentImage",
        (860, 620),
        {"width": 128, "height": 128, "batch_size": 2},
        title="Empty Latent (128 = 64 px for TinyWorld)",
    )
    sampler = g.add(
        "KSampler",
        (1300, 40),
        dict(SAMPLE),
        {"model": (apply, 0), "positive": (pos, 0), "negative": (neg, 0), "latent_image": (latent, 0)},
    )
    decode = g.add("VAEDecode", (1700, 40), {}, {"samples": (sampler, 0), "vae": (loader, 2)})
    save_image(g, (1960, 40), "textloc/generated", (decode, 0), "Save: generated images")
    preview = attention_preview(g, (1300, 560), prompt, apply, loader, batch_size=1)
    save_image(g, (1700, 560), "textloc/attention_overlay", (preview, 1), "Save: attention overlays")
    maps = g.add("MaskToImage", (1700, 940), {}, {"mask": (preview, 2)})
    save_image(g, (1960, 940), "textloc/attention_maps", (maps, 0), "Save: attention maps")
    return g


def _tinyworld_dotstar_adapter(g: Graph, *, steps: int, checkpoint_every: int, adapter_name: str):
    """TinyWorld loader -> dotstar photos (token <tw1>) -> Train (hard) -> Apply: (loader, apply) nodes."""
    loader = tinyworld_loader(g, (20, 300))
    photos = tinyworld_photos(g, "<tw1>")
    # the tuned TinyWorld recipe (docs/results.md): 3e-3 a step, i.e. 1.5e-3 x the batch of 2, the
    # guidance on every attention resolution (round 2's choice); masked loss and text
    # preservation are the node's defaults
    trained = train(
        g,
        (440, 300),
        loader,
        photos,
        steps=steps,
        learning_rate=1.5e-3,
        batch=2,
        map_levels="all",
        checkpoint_every=checkpoint_every,
        adapter_name=adapter_name,
    )
    return loader, apply_adapter(g, (860, 300), loader, trained)


def tinyworld_demo() -> Graph:
    g = Graph("tinyworld_demo")
    note(
        g,
        "TinyWorld end to end: a star the base model never saw (dotted, orange) is taught from 5 photos where it "
        "stands next to a blue circle; its mask guides the token's attention (hard guidance, its weight calibrated "
        "from the gradients before the first step). Then the token is used alone, in the training context, and in "
        "a new scene; each preview shows where <tw1> attends.",
        size=(420, 200),
    )
    loader, apply = _tinyworld_dotstar_adapter(g, steps=100, checkpoint_every=50, adapter_name="tinyworld_dotstar")
    scenes = [
        ("alone", "a <tw1> star on grass"),
        ("context", "a <tw1> star and a blue circle on sand"),
        ("new_scene", "a <tw1> star and a red triangle on night"),
    ]
    for row, (label, prompt) in enumerate(scenes):
        y = 40 + row * 860
        preview = attention_preview(
            g, (1280, y), prompt, apply, loader, title=f"Preview: {label}", tokens="<tw1>", batch_size=2
        )
        save_image(g, (1700, y), f"textloc/tinyworld_{label}", (preview, 0), f"Save: {label} images")
        save_image(g, (2080, y), f"textloc/tinyworld_{label}_attention", (preview, 1), f"Save: {label} attention")
    return g


def tinyworld_evaluate() -> Graph:
    g = Graph("tinyworld_evaluate")
    note(
        g,
        "TinyWorld with numbers: teach the dotted star (hard guidance, 60 steps), generate it alone, and score the "
        "images against fresh renders of the star alone: CLIP-I, CLIP-T (token removed from the prompt) and KID "
        "with TinyWorld's own CLIP. The report is written to output/textloc/tinyworld_scores_*.md and shown on the "
        "node. For SD1.5, set feature_model to a local CLIP folder (the paper uses CLIP ViT-L/14).",
        size=(420, 220),
    )
    loader, apply = _tinyworld_dotstar_adapter(g, steps=60, checkpoint_every=30, adapter_name="tinyworld_dotstar_eval")
    prompt = "a <tw1> star on grass"
    preview = attention_preview(g, (1280, 40), prompt, apply, loader, tokens="<tw1>", batch_size=5)
    save_image(g, (1700, 40), "textloc/tinyworld_eval_attention", (preview, 1), "Save: attention overlays")
    references = g.add("TextLocTinyWorldReferences", (860, 760), {"concept": "dotstar", "images": 8, "seed": 0})
    g.add(
        "TextLocScoreImages",
        (1700, 480),
        {
            "prompt": prompt,
            "feature_model": "tinyworld",
            "kid_subset_size": 5,
            "filename_prefix": "textloc/tinyworld_scores",
        },
        {"images": (preview, 0), "references": (references, 0)},
        size=(400, 420),
    )
    return g


SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"
"""The checkpoint train_sdxl names: Stability AI's SDXL base 1.0 under its published file name
(any SDXL-family checkpoint can be picked in its place)."""


def train_sdxl() -> Graph:
    g = Graph("train_sdxl")
    note(
        g,
        "Teach an SDXL model one concept from photos where it stands next to other things.\n"
        f"1. Load Checkpoint: your SDXL checkpoint ({SDXL_CHECKPOINT} or any SDXL fine-tune).\n"
        "2. Load Image: your photo; right-click it, Open in MaskEditor, and paint over the concept (the painted "
        "area is the mask). For several photos, add a TextLoc Concept From Mask per photo and chain their concepts "
        "inputs, or use TextLoc Concept Folder.\n"
        "3. TextLoc Train: hard guidance keeps the token's attention on the mask, so the token learns the concept "
        "and not its neighbours. 1024 px with gradient checkpointing and mixed precision auto (bf16) fits a 24 GB "
        "card; Cancel keeps the last checkpoint and queueing again resumes.\n"
        "4. Apply + Preview: the new token in a new scene, with the map of where it attends.\n"
        "Outputs: models/textloc/sdxl_concept.safetensors, a stock LoRA (models/loras/textloc) and the embedding "
        "embedding:textloc/sdxl_concept/concept (clip_l + clip_g) for stock nodes.",
        size=(460, 330),
    )
    checkpoint = g.add("CheckpointLoaderSimple", (20, 420), {"ckpt_name": SDXL_CHECKPOINT}, size=(320, 100))
    photo = g.add("LoadImage", (20, 580), {"image": "example.png"}, size=(320, 380))
    concept = g.add(
        "TextLocConceptFromMask",
        (500, 460),
        {"name": "concept", "token": "<concept1>", "class_word": "toy"},
        {"images": (photo, 0), "masks": (photo, 1)},
        size=(340, 260),
    )
    trained = train(
        g,
        (900, 40),
        checkpoint,
        concept,
        size=(360, 560),
        steps=400,
        learning_rate=1e-5,
        batch=1,
        checkpoint_every=50,
        adapter_name="sdxl_concept",
        resolution=1024,
        gradient_checkpointing=True,
        mixed_precision="auto",
    )
    apply = apply_adapter(g, (1320, 40), checkpoint, trained)
    preview = attention_preview(
        g,
        (1320, 400),
        "a photo of a <concept1> toy on a beach",
        apply,
        checkpoint,
        tokens="<concept1>",
        steps=25,
        cfg=6.0,
        width=1024,
        height=1024,
        batch_size=1,
    )
    save_image(g, (1740, 40), "textloc/sdxl_concept", (preview, 0), "Save: images")
    save_image(g, (1740, 600), "textloc/sdxl_concept_attention", (preview, 1), "Save: attention")
    return g


FLUX_FILES = {
    "unet_name": "flux1-dev.safetensors",
    "clip_name1": "clip_l.safetensors",
    "clip_name2": "t5xxl_fp8_e4m3fn.safetensors",
    "vae_name": "ae.safetensors",
}
"""The files train_flux names: Flux.1-dev and its text encoders and VAE under the names ComfyUI's
own Flux examples use (any Flux.1 model can be picked in their place)."""


def _with_note(name: str, text: str, size: tuple[int, int]) -> Graph:
    """A new graph ``name`` whose first node is a Note with ``text`` in the top-left corner."""
    g = Graph(name)
    g.add("Note", (20, 20), {"text": text}, size=size)
    return g


def train_flux() -> Graph:
    g = _with_note(
        "train_flux",
        (
            "Teach a Flux.1 model one concept from photos where it stands next to other things.\n"
            "1. Load Diffusion Model: your Flux.1 model (fp8_e4m3fn keeps the 12 B weights in 8 bits); Dual CLIP "
            "Loader: clip_l and t5xxl (type flux); Load VAE: Flux's ae.\n"
            "2. Load Image: your photo; right-click it, Open in MaskEditor, and paint over the concept.\n"
            "3. TextLoc Train: hard guidance keeps the token's attention on the mask. 1024 px with gradient "
            "checkpointing and mixed precision auto (bf16); optimizer adamw_8bit (pip install bitsandbytes) "
            "saves most of the optimizer's memory on a 24 GB card.\n"
            "4. Apply + Preview: the new token in a new scene at CFG 1 (Flux dev is guidance-distilled: no "
            "negative prompt), with the map of where it attends.\n"
            "Outputs: models/textloc/flux_concept.safetensors (everything, the token's T5 part included), a stock "
            "LoRA (models/loras/textloc) and embedding:textloc/flux_concept/concept (CLIP-L part only)."
        ),
        (460, 360),
    )
    names = FLUX_FILES
    unet = g.add("UNETLoader", (20, 420), {"unet_name": names["unet_name"], "weight_dtype": "fp8_e4m3fn"})
    clips = {"clip_name1": names["clip_name1"], "clip_name2": names["clip_name2"], "type": "flux"}
    clip = g.add("DualCLIPLoader", (20, 540), clips, size=(320, 130))
    vae = g.add("VAELoader", (20, 700), {"vae_name": names["vae_name"]}, size=(320, 60))
    photo = g.add("LoadImage", (20, 800), {"image": "example.png"}, size=(320, 380))
    painted = {"images": (photo, 0), "masks": (photo, 1)}
    named = {"name": "concept", "token": "<concept1>", "class_word": "toy"}
    concept = g.add("TextLocConceptFromMask", (500, 460), named, painted, size=(340, 260))
    settings = {"guidance": "hard", "steps": 400, "learning_rate": 1e-5, "batch": 1, "prior_images": 0}
    settings.update(checkpoint_every=50, adapter_name="flux_concept", resolution=1024, gradient_checkpointing=True)
    base = {"model": (unet, 0), "clip": (clip, 0)}
    train = g.add(
        "TextLocTrain", (900, 40), settings, {**base, "vae": (vae, 0), "concepts": (concept, 0)}, size=(360, 560)
    )
    apply = g.add("TextLocApplyAdapter", (1320, 40), {"adapter_file": "(none)"}, {**base, "adapter": (train, 0)})
    scene = {"prompt": "a photo of a <concept1> toy on a beach", "negative": "", "tokens": "<concept1>"}
    preview = g.add(
        "TextLocAttentionPreview",
        (1320, 400),
        {**scene, **dict(SAMPLE, steps=20, cfg=1.0), "width": 1024, "height": 1024},
        {"model": (apply, 0), "clip": (apply, 1), "vae": (vae, 0)},
        size=(360, 600),
    )
    for i, (what, y) in enumerate((("images", 40), ("attention", 600))):
        prefix = "textloc/flux_concept" + ("" if i == 0 else "_attention")
        g.add("SaveImage", (1740, y), {"filename_prefix": prefix}, {"images": (preview, i)}, title=f"Save: {what}")
    return g


WORKFLOWS = (train_multi_concept, generate_with_adapter, tinyworld_demo, tinyworld_evaluate, train_sdxl, train_flux)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_DIR", str(Path.home() / "ComfyUI")))
    parser.add_argument(
        "--out", type=Path, default=HERE, help="folder to write into (default: this one; a test compares the two)"
    )
    options = parser.parse_args()
    classes = _load_classes(Path(options.comfyui))
    (options.out / "api").mkdir(parents=True, exist_ok=True)
    for build in WORKFLOWS:
        graph = build()
        (options.out / f"{graph.name}.json").write_text(json.dumps(to_ui(graph, classes), indent=1) + "\n")
        (options.out / "api" / f"{graph.name}_api.json").write_text(json.dumps(to_api(graph, classes), indent=1) + "\n")
        print("wrote", graph.name)


if __name__ == "__main__":
    main()
