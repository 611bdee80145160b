"""TinyWorld's build pipeline: trains the embedded world's networks from scratch (VAE, CLIP
text+vision pair, UNet, judge) into textloc_core/tinyworld/weights/ (``build.build_all``, run by
scripts/build_tinyworld.py; ``build_state`` keeps finished phases so an interrupted rebuild
resumes; ``train_world`` has one trainer per network). Not part of the runtime pack: nodes and
the core only read the weights it writes. Imports textloc_core; nothing in textloc_core imports it."""
