"""The adapter: the file a training run writes, the stock formats, adapters composed onto a model.

adapter (``Adapter``, its metadata and file), formats (ComfyUI LoRA / embedding, diffusers
Custom Diffusion), composition (the one path that checks adapters against a model, sums their
deltas and applies them). Training writes adapters and sampling reads them, so both sit above.
"""
