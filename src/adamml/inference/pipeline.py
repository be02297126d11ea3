"""``adamml predict`` as stages, each timed: decode, cheap modalities, policy, flow, networks.

A video is decoded once (only the frames the sample reads, at the config's short side); RGB,
RGB difference and the spectrogram are cut from it; the policy decides from those; then
optical flow, the one costly input, is computed only for the segments whose flow network the
policy selected (the policy looks at RGB difference, as in the paper), and only the selected
sub-networks run, under the execution plan (adamml.models.execution).

A policy that looks at flow itself (``model.policy.flow_proxy: flow``) needs flow on every
segment before deciding, and gets it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from adamml.data.datasets import VideoDataset, policy_frame_subsets
from adamml.data.sampling import sample_indices
from adamml.data.types import VideoEntry
from adamml.modalities.flow import compute_flow, flow_clip
from adamml.modalities.spatial import choose_crop
from adamml.models.build import input_modalities
from adamml.models.execution import ExecutionPlan
from adamml.models.flops import modality_costs
from adamml.models.thresholds import Thresholds, use_margins
from adamml.results import STAGES, Prediction


class LazyFlow:
    """Optical flow fields indexed like ``compute_flow``'s uint8 (N-1, H, W, 2) array, each
    computed from its two frames the first time it is read. ``computed`` counts them."""

    def __init__(self, frames: Any, method: str) -> None:
        self.frames = frames
        self.method = method
        n, h, w = frames.shape[:3]
        self.shape = (max(int(n) - 1, 0), int(h), int(w), 2)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 4
        self.fields: dict[int, np.ndarray] = {}

    @property
    def computed(self) -> int:
        return len(self.fields)

    def __len__(self) -> int:
        return self.shape[0]

    def _get(self, i: int) -> np.ndarray:
        if i not in self.fields:
            pair = np.stack([self.frames[i], self.frames[i + 1]])
            self.fields[i] = compute_flow(pair, self.method)[0]
        return self.fields[i]

    def __getitem__(self, key: int | np.ndarray) -> np.ndarray:
        if isinstance(key, int | np.integer):
            return self._get(int(key))
        indices = np.asarray(key).reshape(-1)
        return np.stack([self._get(int(i)) for i in indices]) if len(indices) else np.empty((0, *self.shape[1:]), self.dtype)


class _SampleDataset(VideoDataset):
    """The evaluation dataset, keeping the last decoded video (flow is cut from it later) and
    timing its decode apart from building the tensors."""

    last: Any = None
    decode_seconds: float = 0.0

    def load(self, entry: VideoEntry):
        start = time.perf_counter()
        self.last = super().load(entry)
        self.decode_seconds = time.perf_counter() - start
        return self.last


@dataclass
class Prepared:
    """One video after decoding and the cheap modalities: the batch (B=1) and what flow needs."""

    video: str
    batch: dict[str, Any]
    decoded: Any
    indices: np.ndarray  # (K, T) frame indices of the sample
    seconds: dict[str, float] = field(default_factory=dict)
    margins: torch.Tensor | None = None  # (1, K, M) the policy's logit(p_use)
    flow_fields: int = 0  # optical flow fields computed


class Predictor:
    """A trained model ready for files: ``prepare`` -> ``decide`` -> ``finish`` (or ``run``)."""

    def __init__(self, model, kind: str, model_cfg, cfg, class_names: Sequence[str], *,
                 device: str = "cpu", plan: ExecutionPlan | None = None) -> None:
        self.kind = kind
        self.model_cfg = model_cfg
        self.cfg = cfg
        self.class_names = list(class_names)
        self.plan = plan or ExecutionPlan.for_device(device)
        self.model = self.plan.prepare(model)
        self.device = torch.device(self.plan.device)
        self.costs = modality_costs(model_cfg, cfg.data.clip)
        decode = dataclasses.replace(cfg.data.decode)
        needed = _input_modalities(kind, model_cfg)
        self.flow_method = decode.flow or "tvl1"  # the method the model was trained with (TV-L1: precomputed flow)
        # Flow is deferred when the policy does not look at it: it is cut per selected segment.
        self.defer_flow = "flow" in needed and not (kind == "adamml" and model_cfg.policy.flow_proxy == "flow")
        # Inputs only the policy reads are computed on the frames it reads (every other frame
        # of a segment), not on all T: at paper size the policy's RGB difference was the
        # costliest thing `prepare` did (10 x 8 x 15 x 224² floats per video).
        self.frame_subsets = policy_frame_subsets(model_cfg, cfg.data.clip, needed)
        if self.defer_flow:
            needed = [m for m in needed if m != "flow"]
            if "rgbdiff" not in needed:  # keep the flow stacks' frames in what is decoded
                needed.append("rgbdiff")
                self.frame_subsets["rgbdiff"] = [0]  # read by nothing: the least of it
            decode.flow = None
        elif "flow" in needed:
            decode.flow = self.flow_method
        self.needed = needed
        self.decode = decode

    def _dataset(self, video: str | Path) -> _SampleDataset:
        entry = VideoEntry(path=Path(video), labels=[0], source=str(video))
        return _SampleDataset([entry], self.class_names, modalities=self.needed, clip=self.cfg.data.clip,
                              decode=self.decode, train=False, cache=None,
                              num_segments=self.cfg.data.eval_segments, stream=True,
                              frame_subsets=self.frame_subsets)

    def prepare(self, video: str | Path) -> Prepared:
        """Decode once and cut RGB / RGB difference / spectrogram (and flow if the policy needs it)."""
        dataset = self._dataset(video)
        start = time.perf_counter()
        sample = dataset[0]
        total = time.perf_counter() - start
        decoded = dataset.last
        indices = sample_indices(decoded.num_frames, dataset._sampling_clip, False, None,
                                 num_segments=dataset.num_segments)
        batch = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v
                 for k, v in default_collate([sample]).items()}
        seconds = {"decode": dataset.decode_seconds, "modalities": total - dataset.decode_seconds}
        return Prepared(video=str(video), batch=batch, decoded=decoded, indices=indices, seconds=seconds)

    def decide(self, prepared: Prepared) -> torch.Tensor | None:
        """Run the policy: (1, K, M) margins (logit of "use"); None for fixed networks."""
        if self.kind != "adamml":
            return None
        start = time.perf_counter()
        with self.plan.context():
            out = self.model.policy(self.model.policy.policy_inputs(prepared.batch), temperature=1.0, sample=False)
        prepared.margins = use_margins(out.logits.float()).cpu()
        prepared.seconds["policy"] = time.perf_counter() - start
        return prepared.margins

    def add_flow(self, prepared: Prepared, segments: np.ndarray) -> None:
        """Flow tensors for the given segments only (zeros elsewhere, never read)."""
        start = time.perf_counter()
        clip = self.cfg.data.clip
        frames = prepared.decoded.frames
        lazy = LazyFlow(frames, self.flow_method)
        k, t = prepared.indices.shape
        out = torch.zeros(1, k, t, 2 * clip.stack_length, clip.crop_size, clip.crop_size)
        if len(segments):
            crop = choose_crop(frames.shape[1], frames.shape[2], clip.crop_size, False)
            values = flow_clip(lazy, prepared.indices[segments], clip.stack_length, crop, clip.crop_size)
            out[0, torch.as_tensor(segments)] = torch.from_numpy(values)
        prepared.batch["flow"] = out.to(self.device)
        prepared.flow_fields = lazy.computed
        prepared.seconds["flow"] = time.perf_counter() - start

    def finish(self, prepared: Prepared, thresholds: Thresholds | None = None, topk: int = 5):
        """Decisions (thresholds on the margins; argmax without), flow where selected, the
        selected networks, fusion: a Prediction."""
        modalities = list(self.model_cfg.modalities)
        k = prepared.indices.shape[0]
        if self.kind == "adamml":
            if prepared.margins is None:
                self.decide(prepared)
            margins = prepared.margins
            # Without a budget: the thresholds the policy was trained to (0: its argmax).
            decisions = thresholds.decide(margins) if thresholds is not None else self.model.policy.decide(margins)
        else:
            decisions = torch.ones(1, k, len(modalities))
        if self.defer_flow:
            self.add_flow(prepared, decisions[0, :, modalities.index("flow")].nonzero().flatten().numpy())
        start = time.perf_counter()
        with self.plan.context():
            if self.kind == "adamml":
                out = self.model(prepared.batch, mode="conditional", decisions=decisions.to(self.device))
            else:
                out = self.model(prepared.batch)
        logits = out.logits[0].float().cpu()
        prepared.seconds["networks"] = time.perf_counter() - start
        per_seg = torch.tensor([self.costs[m] for m in modalities], dtype=torch.float64)
        policy = self.costs["policy"] if self.kind == "adamml" else 0.0
        gflops = float((decisions[0].double() * per_seg).sum()) + policy * k
        probs = torch.softmax(logits, dim=-1)
        scores, idx = probs.topk(min(topk, probs.numel()))
        return Prediction(
            video=prepared.video,
            top=[(self.class_names[j], float(s)) for s, j in zip(scores.tolist(), idx.tolist(), strict=True)],
            segments=[[m for m, d in zip(modalities, row, strict=True) if d > 0.5] for row in decisions[0].tolist()],
            gflops=gflops,
            audio_missing=bool(prepared.batch.get("audio_missing", torch.tensor(False)).any()),
            seconds={s: prepared.seconds.get(s, 0.0) for s in STAGES},
            flow_fields=prepared.flow_fields,
        )

    def run(self, video: str | Path, thresholds: Thresholds | None = None, topk: int = 5):
        """The whole of one video (what ``adamml predict`` does per file)."""
        prepared = self.prepare(video)
        self.decide(prepared)
        return self.finish(prepared, thresholds, topk)


def _input_modalities(kind: str, model_cfg) -> list[str]:
    return input_modalities(kind, model_cfg)
