"""The modalities, one row each: everything the rest of the package knows about a modality.

Datasets, recognition networks, the policy, FLOPs counting, reports and plots read what they
need from :data:`MODALITIES` instead of testing names, so adding a modality is one row here
plus its extractor (see docs/architecture.md). Tensor layouts are in :mod:`adamml.layouts`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from adamml.config import ClipSettings
from adamml.data.sampling import segment_centres_s
from adamml.media import DecodedVideo
from adamml.modalities.audio import log_spectrogram, spectrogram_shape
from adamml.modalities.flow import flow_clip
from adamml.modalities.rgb import rgb_clip
from adamml.modalities.rgbdiff import rgbdiff_clip
from adamml.modalities.spatial import Crop

# video, (K, T) frame indices, the sample's crop (None when no visual modality is asked for),
# clip settings, time of frame 0 in the audio track (s) -> the sample's tensor (layouts.py).
Extractor = Callable[[DecodedVideo, np.ndarray, "Crop | None", ClipSettings, float], Any]

# Input shapes (FLOPs, meta-device models) take the spectrogram length at this rate when
# ClipSettings.audio_frames does not fix it (the paper decodes audio at 24 kHz).
COUNTING_SAMPLE_RATE = 24_000


@dataclass(frozen=True)
class Modality:
    """One row of the table.

    name: the key in configs, batches and reports.
    title: its name in tables and plots; colour: its colour in plots.
    visual: computed from the frames, with the sample's shared crop: input (T, C, H, W) per
        segment; otherwise from the audio track: input (C, F, S).
    channels_per_frame: input channels per time step, per stacked frame when ``stacked``.
    stacked: a time step stacks the L = ``clip.stack_length`` frames after the sampled one
        (flow fields, frame differences), so sampling must leave L frames after it.
    reads: the stream of the decoded video it needs: "frames", "flow" or "audio".
    proxy: what the policy looks at instead to decide whether to compute it (None: itself).
        ``model.policy.flow_proxy`` may choose the modality itself instead.
    normalisation: how its values are scaled (the models' inputs must be re-scaled the same).
    extract: the function that computes it for one sample (see ``Extractor``).
    """

    name: str
    title: str
    colour: str
    visual: bool
    channels_per_frame: int
    stacked: bool
    reads: str
    proxy: str | None
    normalisation: str
    extract: Extractor

    def channels(self, clip: ClipSettings) -> int:
        """Input channels per time step: rgb 3, flow 2L, rgbdiff 3L, audio 1."""
        return self.channels_per_frame * (clip.stack_length if self.stacked else 1)

    def frames(self, clip: ClipSettings) -> int:
        """Time steps per segment a recognition network sees (1 for a spectrogram)."""
        return clip.frames_per_segment if self.visual else 1

    def input_shape(self, clip: ClipSettings, *, frames: int | None = None, size: int | None = None) -> tuple[int, ...]:
        """One segment's input, no batch: (T, C, S, S) visual, (C, F, S) spectrogram.

        ``frames`` and ``size`` override the clip's (the policy looks at fewer, smaller frames).
        """
        if not self.visual:
            return (self.channels(clip), *_spectrogram_size(clip))
        size = size or clip.crop_size
        return (frames or clip.frames_per_segment, self.channels(clip), size, size)


def _spectrogram_size(clip: ClipSettings) -> tuple[int, int]:
    """(F, S) of one segment's spectrogram without decoding anything: S is
    ``clip.audio_frames`` when set (every shipped config sets it), else the centred STFT's
    frame count at ``COUNTING_SAMPLE_RATE``, on which it depends only through rounding."""
    if clip.audio_frames:
        return (clip.n_mels if clip.spectrogram == "mel" else clip.n_fft // 2 + 1), clip.audio_frames
    return spectrogram_shape(COUNTING_SAMPLE_RATE, clip)


def _rgb(video: DecodedVideo, indices: np.ndarray, crop: Crop | None, clip: ClipSettings, start_s: float):
    return rgb_clip(video.frames, indices, crop, clip.crop_size)


def _flow(video: DecodedVideo, indices: np.ndarray, crop: Crop | None, clip: ClipSettings, start_s: float):
    return flow_clip(video.flow, indices, clip.stack_length, crop, clip.crop_size,
                     reference=clip.stack_norm == "reference")


def _rgbdiff(video: DecodedVideo, indices: np.ndarray, crop: Crop | None, clip: ClipSettings, start_s: float):
    return rgbdiff_clip(video.frames, indices, clip.stack_length, crop, clip.crop_size,
                        reference=clip.stack_norm == "reference")


def _audio(video: DecodedVideo, indices: np.ndarray, crop: Crop | None, clip: ClipSettings, start_s: float):
    centres = segment_centres_s(indices, video.fps) + start_s
    return log_spectrogram(video.audio, video.sample_rate, centres, clip, video.audio_missing)


MODALITIES: dict[str, Modality] = {
    m.name: m
    for m in (
        Modality("rgb", "RGB", "#1f77b4", visual=True, channels_per_frame=3, stacked=False,
                 reads="frames", proxy=None, normalisation="ImageNet mean and std", extract=_rgb),
        Modality("audio", "Audio", "#ff7f0e", visual=False, channels_per_frame=1, stacked=False,
                 reads="audio", proxy=None, normalisation="log(|STFT|^2 + 1e-6)", extract=_audio),
        Modality("flow", "Flow", "#2ca02c", visual=True, channels_per_frame=2, stacked=True,
                 reads="flow", proxy="rgbdiff", normalisation="pixels / layouts.FLOW_BOUND, in [-1, 1] (clip.stack_norm reference: (u8/255 - 0.5) / 0.226)",
                 extract=_flow),
        Modality("rgbdiff", "RGBDiff", "#9467bd", visual=True, channels_per_frame=3, stacked=True,
                 reads="frames", proxy=None, normalisation="differences of [0, 1] pixels / ImageNet std (clip.stack_norm reference: ((d+255)/2 u8 / 255 - mean) / std)",
                 extract=_rgbdiff),
    )
}


def check_modalities(names: list[str] | tuple[str, ...]) -> list[str]:
    """Validate modality names early, with a message that lists the valid ones."""
    out = []
    for name in names:
        name = name.strip()
        if name not in MODALITIES:
            raise ValueError(f"unknown modality {name!r}: expected one of {', '.join(MODALITIES)}")
        out.append(name)
    if not out:
        raise ValueError("no modality given: expected one or more of " + ", ".join(MODALITIES))
    return out


def modality_channels(name: str, clip: ClipSettings) -> int:
    """Input channels per time step of modality ``name`` (checked): rgb 3, flow 2L, rgbdiff 3L,
    audio 1."""
    check_modalities([name])
    return MODALITIES[name].channels(clip)


def title(name: str) -> str:
    """How tables and plots name a modality (its own name when it is not in the table)."""
    return MODALITIES[name].title if name in MODALITIES else name


def policy_source(name: str, flow_proxy: str | None = None) -> str:
    """The input the policy looks at to decide about modality ``name``.

    Its proxy when it has one (flow -> rgbdiff: flow is never computed just to decide whether
    to compute it); ``flow_proxy`` (``model.policy.flow_proxy``) may name the proxy or the
    modality itself.
    """
    proxy = MODALITIES[name].proxy
    if proxy is None:
        return name
    choice = flow_proxy or proxy
    if choice not in (proxy, name):
        raise ValueError(f"policy.flow_proxy must be {proxy!r} or {name!r}, got {choice!r}")
    return choice


def input_modalities(modalities: list[str], *, flow_proxy: str | None = None, policy: bool = True) -> list[str]:
    """What a model needs from the dataset: its modalities, and with a ``policy`` the inputs
    the policy looks at in their place (AdaMML with flow also needs rgbdiff)."""
    needed = list(modalities)
    if policy:
        for m in modalities:
            source = policy_source(m, flow_proxy)
            if source not in needed:
                needed.append(source)
    return needed
