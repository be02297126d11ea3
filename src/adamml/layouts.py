"""The tensor layouts every part of adamml agrees on.

One place so that data, models and training never guess each other's shapes.

Modalities (names used everywhere: configs, dict keys, reports; their properties are the
rows of :data:`adamml.modalities.table.MODALITIES`)::

    "rgb"      RGB frames
    "audio"    log spectrogram of the audio track
    "flow"     optical flow (TV-L1 or DIS), quantised to uint8 in the cache
    "rgbdiff"  differences of consecutive RGB frames (a cheap flow proxy)

A *sample* (what ``Dataset.__getitem__`` returns) is a dict; a *batch* is the same dict
with a leading batch dimension B. With K segments per video, T frame positions per
segment, L stacked flow fields / frame differences per position:

    "rgb":           float32 (K, T, 3, H, W)      ImageNet-normalised
    "flow":          float32 (K, T, 2*L, H, W)    (x, y) interleaved: x1, y1, x2, y2, ...;
                                                   values flow / bound, in [-1, 1]
    "rgbdiff":       float32 (K, T, 3*L, H, W)    frame[t+1] - frame[t] on [0, 1] pixels,
                                                   divided by the ImageNet std
    "audio":         float32 (K, 1, F, S)         log(|STFT|^2 + 1e-6), F freq bins, S frames
    "audio_missing": bool    ()                   True when the video has no audio track
    "label":         int64   ()                   the (first) class index
    "multi_hot":     float32 (C,)                 all labels of the video (multi-label sets)
    "index":         int64   ()                   position in the dataset
    "video":         str                          the source path (for reports)
    "<m>_frames":    int64   (T',)                only when modality m was computed on some
                                                   frames of each segment (the policy's RGB
                                                   difference: its every other frame); m is
                                                   then (K, T', ...)

Decisions of the policy: float32 (B, K, M) in {0, 1}, M = number of recognition modalities
in the model's order. Segment logits: (B, K, M, C). Video logits: (B, C).
"""

from __future__ import annotations

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Optical flow is clipped to +-FLOW_BOUND pixels and stored as uint8 (the TSN/AdaMML convention).
FLOW_BOUND: float = 20.0

