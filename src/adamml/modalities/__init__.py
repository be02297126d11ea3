"""Turn decoded media into the per-segment tensors of each modality (see adamml.layouts).

One module per modality (``rgb``, ``audio``, ``flow``, ``rgbdiff``) and ``spatial`` for the
crop they share; ``table`` holds one row per modality that everything else reads.
"""
