"""Model backends: the protocols between the core and a framework's model objects (base), the
diffusers implementation, the base-model fingerprint and the diffusers <-> LDM layer names."""
