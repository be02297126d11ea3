"""The training/evaluation dataset: decoded (or cached) videos -> the sample dict of layouts.py.

One sample = K segments of one video, each modality sampled at the same frame indices and
cropped with the same :class:`~adamml.modalities.spatial.Crop` (``data.clip.crops: shared``),
so the policy and the recognition networks look at the same moment and region; with
``independent`` each visual input draws its own training crop, as the reference's. Randomness comes from a numpy
Generator seeded by (seed, epoch, index): a sample is the same whatever the number of
workers or their order, and changes from epoch to epoch through :meth:`VideoDataset.set_epoch`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from adamml.config import ClipSettings, DecodeSettings, ExperimentConfig, ModelConfig
from adamml.data.cache import VideoCache
from adamml.data.catalog import DATASETS, discover
from adamml.data.formats import DatasetError, frame_folder_audio
from adamml.data.sampling import (
    centre_window_starts,
    clip_indices,
    policy_frame_indices,
    sample_indices,
)
from adamml.data.types import VideoEntry
from adamml.media import DecodedVideo
from adamml.modalities.spatial import choose_crop
from adamml.modalities.table import MODALITIES, check_modalities, input_modalities


def _tensor(value: Any) -> torch.Tensor:
    """Modality functions may return numpy or torch; samples are float32 tensors."""
    return torch.as_tensor(np.ascontiguousarray(value) if isinstance(value, np.ndarray) else value).float()


def cut_modalities(decoded: DecodedVideo, indices: np.ndarray, crop, clip: ClipSettings, start_s: float,
                   modalities: list[str], frame_subsets: dict[str, list[int]] | None = None) -> dict[str, torch.Tensor]:
    """Each modality's tensor of one sample (layouts.py) from a decoded video, its (K, T) frame
    indices and crop (one for all, or {modality: crop}), through the modality table; a
    modality in ``frame_subsets`` on those frames of each segment only, with
    ``"<modality>_frames"`` saying which. ``start_s``: the time of frame 0 in the audio track."""
    out: dict[str, torch.Tensor] = {}
    for m in modalities:
        at = indices
        if frame_subsets and m in frame_subsets:
            at = indices[:, frame_subsets[m]]
            out[f"{m}_frames"] = torch.tensor(frame_subsets[m], dtype=torch.int64)
        own = crop.get(m) if isinstance(crop, dict) else crop
        out[m] = _tensor(MODALITIES[m].extract(decoded, at, own, clip, start_s))
    return out


class VideoDataset(Dataset):
    """Samples of K segments per video, for the requested modalities only.

    ``__getitem__`` returns the dict documented in :mod:`adamml.layouts`: "rgb" (K, T, 3, S, S),
    "flow" (K, T, 2L, S, S), "rgbdiff" (K, T, 3L, S, S), "audio" (K, 1, F, frames),
    "audio_missing", "label", "multi_hot" (C,), "index", "video". ``multi_hot`` is always
    present (one-hot for single-label sets) so batches collate the same way for every set.
    """

    def __init__(
        self,
        entries: list[VideoEntry],
        class_names: list[str],
        *,
        modalities: list[str],
        clip: ClipSettings,
        decode: DecodeSettings,
        train: bool,
        cache: VideoCache | None = None,
        num_segments: int | None = None,
        multi_label: bool = False,
        seed: int = 0,
        stream: bool = False,
        frame_subsets: dict[str, list[int]] | None = None,
        audio_window: str = "clip",
    ) -> None:
        """``stream``: decode video files keeping only the frames a sample reads (evaluation
        and inference on long videos: memory stays one sample's frames whatever the length).
        Evaluation only, where the frames a sample reads depend on the length alone.

        ``frame_subsets``: modality -> which of each segment's T frames to compute it for;
        the sample then holds those only, and says which under ``"<modality>_frames"``. An
        input only the policy reads (the RGB difference it decides about flow from) is
        computed on the policy's frames, not on all T.

        ``audio_window`` "centre" (an audio-only dataset): in training each clip centred near
        the middle of the video, or of its K-th, as the reference's audio sampler
        (``sampling.centre_window_starts``); in evaluation the centre of each K-th (for one
        clip, the video's centre, where the reference validates audio); "clip": where any clip
        is drawn."""
        if stream and train:
            raise ValueError("stream=True is for evaluation: training samples random frames")
        if not entries:
            raise DatasetError("no videos given to VideoDataset (the split is empty)")
        self.entries = list(entries)
        self.class_names = list(class_names)
        self.modalities = check_modalities(modalities)
        self.clip = clip
        self.decode = decode
        self.train = train
        self.cache = cache
        self.num_segments = int(num_segments if num_segments is not None else clip.num_segments)
        self.multi_label = multi_label
        self.seed = int(seed)
        self.stream = stream
        self.frame_subsets = {m: list(frames) for m, frames in (frame_subsets or {}).items()}
        self.audio_window = audio_window
        self.epoch = 0
        # RGB-only samples may use the video's last frames; stacks need L frames after.
        needs_stack = any(MODALITIES[m].stacked for m in self.modalities)
        self._sampling_clip = clip if needs_stack else dataclasses.replace(clip, stack_length=0)
        if not train and audio_window == "centre" and self.modalities == ["audio"]:
            self._sampling_clip = dataclasses.replace(self._sampling_clip, eval_positions="centre")
        num_classes = len(self.class_names)
        for entry in self.entries:
            if not entry.labels:
                raise DatasetError(f"{entry.source or entry.path}: video has no label")
            bad = [i for i in entry.labels if not 0 <= i < num_classes]
            if bad:
                raise DatasetError(
                    f"{entry.source or entry.path}: label index {bad[0]} out of range 0..{num_classes - 1}"
                )
            if not multi_label and len(entry.labels) > 1:
                raise DatasetError(
                    f"{entry.source or entry.path}: {len(entry.labels)} labels on a single-label "
                    "dataset; set data.multi_label: true for multi-label sets"
                )
        flow = [m for m in self.modalities if MODALITIES[m].reads == "flow"]
        if cache is None and flow and not decode.flow:
            if any(not Path(e.path).is_dir() for e in self.entries):
                raise DatasetError(
                    f"modality {flow[0]!r} requested but decode.flow is not set: set "
                    "data.decode.flow to 'tvl1' (the paper's) or 'dis' to compute it while "
                    "decoding, or extract a cache with flow first (adamml extract)"
                )

    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        """Change the random draws (offsets, crops) for a new epoch, reproducibly.

        Call it before creating the epoch's DataLoader iterator: workers copy the dataset
        when the iterator starts, so with ``persistent_workers=True`` they keep the old epoch.
        """
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        """The Generator of one sample: a function of (seed, epoch, index) only."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    # ------------------------------------------------------------------ loading

    def load(self, entry: VideoEntry) -> DecodedVideo:
        """Decoded media of one entry: from the cache when there is one, else decoded now."""
        from adamml.data import video  # PyAV only when decoding: keeps `adamml --help` fast

        path = Path(entry.path)
        if self.cache is not None:
            if not self.cache.has(path, entry.frame_range):
                raise DatasetError(
                    f"{path}: not in the cache at {getattr(self.cache, 'root', '?')}. Run "
                    "`adamml extract` on this dataset first with the same decode settings "
                    f"(fps={self.decode.fps}, short_side={self.decode.short_side}, "
                    f"sample_rate={self.decode.sample_rate}, flow={self.decode.flow}), "
                    "or set data.use_cache: false to decode while training"
                )
            decoded = self.cache.load(path, lazy=True, frame_range=entry.frame_range)
        elif path.is_dir():
            # Name the expected WAV when there is none, so the missing-audio warning says it.
            audio = frame_folder_audio(path) or path.with_name(path.name + ".wav")
            decoded = video.decode_frame_folder(path, self.decode, entry.start, entry.end, audio_path=audio)
        else:
            decoded = video.decode_video(path, self.decode, keep_frames=self._frames_read if self.stream else None)
        if decoded.num_frames < 1:
            raise DatasetError(f"{path}: decoded to zero frames")
        flow = [m for m in self.modalities if MODALITIES[m].reads == "flow"]
        if flow and decoded.flow is None:
            where = "the cache entry" if self.cache is not None else "decoding"
            raise DatasetError(
                f"{path}: modality {flow[0]!r} requested but {where} has no optical flow; re-run "
                "`adamml extract` with flow enabled (data.decode.flow: tvl1 or dis)"
            )
        return decoded

    def _frames_read(self, num_frames: int) -> np.ndarray:
        """Every frame index an evaluation sample of a ``num_frames`` video reads (a clip's
        frames and, for RGB difference / flow stacks, the L after each)."""
        indices = sample_indices(num_frames, self._sampling_clip, False, None, num_segments=self.num_segments)
        steps = np.arange(self._sampling_clip.stack_length + 1)
        return np.minimum(indices[..., None] + steps, num_frames - 1)

    # ------------------------------------------------------------------ samples

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.entries):
            raise IndexError(f"index {index} out of range for {len(self.entries)} videos")
        entry = self.entries[index]
        decoded = self.load(entry)
        rng = self.rng(index)
        n = decoded.num_frames
        if self.train and self.audio_window == "centre" and self.modalities == ["audio"]:
            starts = centre_window_starts(n, self._sampling_clip, rng, num_segments=self.num_segments)
            indices = clip_indices(starts, self._sampling_clip, n)
        else:
            indices = sample_indices(n, self._sampling_clip, self.train, rng, num_segments=self.num_segments)
        sample: dict[str, Any] = {}
        crop: Any = None
        visual = [m for m in self.modalities if MODALITIES[m].visual]
        if visual:
            height, width = decoded.frames.shape[1:3]

            def draw():
                return choose_crop(
                    height, width, self.clip.crop_size, self.train, rng, self.clip.train_crop, self.clip.train_flip
                )

            crop = draw()  # one crop for all of them; with "independent", the first one's
            if self.train and self.clip.crops == "independent":
                crop = {m: crop if i == 0 else draw() for i, m in enumerate(visual)}
        # A frame folder listed from frame `start` shares its WAV with the whole video.
        start = entry.start if entry.start is not None and Path(entry.path).is_dir() else 1
        start_s = (start - 1) / decoded.fps
        sample.update(cut_modalities(decoded, indices, crop, self.clip, start_s, self.modalities, self.frame_subsets))
        multi_hot = torch.zeros(len(self.class_names), dtype=torch.float32)
        multi_hot[entry.labels] = 1.0
        sample["audio_missing"] = torch.tensor(bool(decoded.audio_missing))
        sample["label"] = torch.tensor(entry.labels[0], dtype=torch.int64)
        sample["multi_hot"] = multi_hot
        sample["index"] = torch.tensor(index, dtype=torch.int64)
        sample["video"] = str(entry.path)
        return sample


def policy_frame_subsets(model: ModelConfig, clip: ClipSettings, modalities: list[str]) -> dict[str, list[int]]:
    """The inputs among ``modalities`` that only the policy reads (visual ones that are not the
    model's modalities: the RGB difference it decides about flow from), each with the frames
    of a segment it reads: a dataset computes them on those frames alone."""
    frames = policy_frame_indices(clip.frames_per_segment, model.policy.frames)
    return {m: frames for m in modalities if m not in model.modalities and MODALITIES[m].visual}


def build_datasets(
    config: ExperimentConfig,
    *,
    modalities: list[str] | None = None,
    with_train: bool = True,
    train_segments: int | None = None,
    audio_window: str = "clip",
    val_segments: int | None = None,
) -> tuple[VideoDataset | None, VideoDataset, list[str]]:
    """Train and validation datasets of an experiment config, and the class names.

    ``with_train=False`` (evaluation) skips the training split and returns None for it.
    ``train_segments``: clips per training video (None: ``data.clip.num_segments``).
    ``audio_window``: where an audio-only set draws its windows (``VideoDataset``).
    ``val_segments``: clips per validation video (None: ``data.eval_segments``); with it the
    validation set samples its audio windows as ``audio_window`` says, as the training set.

    Modalities default to the model's, plus what its policy looks at in their place ("rgbdiff"
    for "flow": the policy never computes flow to decide; see the modality table). The cache is
    ``data.cache`` or ``<root>/cache`` unless ``data.use_cache`` is false.
    """
    data = config.data
    if not data.root:
        raise DatasetError("data.root is not set: give the folder that holds the dataset")
    root = Path(data.root)
    info = DATASETS.get(data.dataset)
    dataset_name = data.dataset if info is not None else None
    class_names: list[str] | None = None
    if with_train:
        train_entries, class_names = discover(root, data.train_split, dataset_name)
    val_entries, class_names = discover(root, data.val_split, dataset_name, class_names=class_names)
    if len(class_names) != config.model.num_classes:
        raise DatasetError(
            f"{root}: the dataset has {len(class_names)} classes but model.num_classes is "
            f"{config.model.num_classes}; set model.num_classes: {len(class_names)}"
        )
    if modalities is None:
        modalities = input_modalities(config.model.modalities, flow_proxy=config.model.policy.flow_proxy)
    cache = None
    if data.use_cache:
        cache = VideoCache(Path(data.cache) if data.cache else root / "cache", data.decode)
    multi_label = data.multi_label or (info.multi_label if info is not None else False)
    common = dict(
        modalities=modalities, clip=data.clip, decode=data.decode, cache=cache,
        multi_label=multi_label, seed=config.train.seed,
        frame_subsets=policy_frame_subsets(config.model, data.clip, modalities),
    )
    train_ds = (
        VideoDataset(train_entries, class_names, train=True, num_segments=train_segments, audio_window=audio_window,
                     **common)
        if with_train
        else None
    )
    # Decoding while evaluating (no cache): keep only the frames each sample reads.
    val_ds = VideoDataset(
        val_entries, class_names, train=False, num_segments=val_segments or data.eval_segments,
        stream=cache is None, audio_window=audio_window if val_segments else "clip", **common
    )
    return train_ds, val_ds, class_names
