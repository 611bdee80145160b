"""Training: config (``TrainConfig``), setup -> step -> loop (the trainer), result (``TrainResult``,
``make_adapter``), prior (cached class-prior latents), checkpoint (crash-safe, resumable)."""
