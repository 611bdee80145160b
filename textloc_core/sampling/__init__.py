"""Sampling: the SD noise schedule and DDIM sampler (schedule), and generation with adapters and
token maps (generation)."""
