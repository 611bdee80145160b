"""Cross-attention (attn2): trainable K/V deltas, token-map capture, one map per concept, the losses.

cross_attention (discovery, ``KVDeltaInjector``, ``AttentionRouter`` and the step-averaging
``AveragingRouter``), maps (captured probabilities -> per-concept maps), guidance (the hard /
soft / none losses as pure functions).
"""
