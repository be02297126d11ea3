"""Video files -> decoded, cached media -> segment-sampled datasets."""
