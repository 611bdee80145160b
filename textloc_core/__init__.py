"""textloc_core: Textual Localization training core (plain torch; no ComfyUI import)."""
