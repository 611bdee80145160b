"""textloc_core: Textual Localization training core (plain torch; no ComfyUI import).

One package per role, lowest first; each imports only from itself and the ones before it
(tests/core/test_import_direction.py): stop (what a stop is, one module), data, attention,
backends, adapters, sampling, training, tinyworld, evaluation. ``api`` is the Python API facade over all of them (docs/api.md).
"""
