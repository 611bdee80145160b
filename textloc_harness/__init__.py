"""The ComfyUI harness: start a headless ComfyUI with this pack and talk to it (demo, tests).

Not part of the pack ComfyUI loads, and never imported by textloc_core or nodes/.
"""
