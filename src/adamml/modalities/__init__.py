"""Turn decoded media into the per-segment tensors of each modality (see adamml.layouts)."""
