"""Every place where textloc relies on a part of ComfyUI that has no public surface.

Everything else in nodes/ uses public surfaces only: the V3 node API, ModelPatcher's clone /
setters / ``get_key_patches`` / ``add_patches``, the CLIP object's ``tokenize`` /
``encode_from_tokens``, the VAE's ``encode`` / ``decode``. What those cannot give is one
function in this package, saying what it relies on, in a module by topic:

* ``model``: what a MODEL / CLIP / VAE holds (its diffusion model, prediction type, latent
  format, dtype and device, transformer_options, the patchers, the VAE's scale), and what
  training and the TinyWorld loader set (inference-mode weights made ordinary, checkpointed
  blocks, how ComfyUI rebuilds the model, ComfyUI's training switch);
* ``text``: the CLIP encoders' embedding tables and transformers, gradients through them, T5's
  token list and where its rows sit in a Flux / SD3 context;
* ``t5_rows``: a Flux / SD3 token's T5 part written into those rows after T5 runs;
* ``unet``: a direct UNet call, SDXL's adm vector, attn2 replacements and their options;
* ``dit``: Flux / SD3 joint blocks, their noise schedule, a direct call, gradients through
  Flux's blocks, the ``dit`` block patch that captures the joint attention.

The rest of the pack imports these names from here (``from .comfy_internals import ...``).
tests/integration/test_comfy_surface.py lists every ComfyUI name they use (``SURFACE``,
``INSTANCE_ATTRIBUTES``, ``OPTION_KEYS``), checks them on every supported ComfyUI version, and
fails when a module of nodes/ outside this package reads one of those attributes or keys itself.
"""

# each module's __all__ is what it offers the rest of the pack
from . import dit, model, t5_rows, text, unet
from .dit import *  # noqa: F403
from .model import *  # noqa: F403
from .t5_rows import *  # noqa: F403
from .text import *  # noqa: F403
from .unet import *  # noqa: F403

__all__ = [*dit.__all__, *model.__all__, *t5_rows.__all__, *text.__all__, *unet.__all__]
