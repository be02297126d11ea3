"""Prediction as stages, each timed: decode, cheap modalities, policy, flow, networks.

Every way in -- a file, decoded arrays, a window of a long video, a batch of samples decoded
elsewhere (the Ray engine) -- becomes a :class:`Prepared` batch, and :meth:`Predictor.finish_all`
turns it into :class:`~adamml.results.Prediction` objects: decisions, GFLOPs and top-k are
computed there and nowhere else. A fixed network (unimodal, fusion) decides "every modality
on every segment" with no policy cost, so no caller branches on the kind of model.

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
from einops import rearrange
from torch.utils.data import default_collate

from adamml.data.datasets import VideoDataset, policy_frame_subsets
from adamml.data.sampling import sample_indices
from adamml.data.types import VideoEntry
from adamml.modalities.flow import LazyFlow, flow_clip
from adamml.modalities.spatial import choose_crop
from adamml.modalities.table import MODALITIES
from adamml.models.build import LoadedModel, ModelSpec
from adamml.models.execution import ExecutionPlan
from adamml.models.flops import gflops_per_video, modality_costs
from adamml.models.thresholds import Budget, Thresholds, fit_thresholds, use_margins
from adamml.results import STAGES, Prediction


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
    """Videos after decoding and the cheap modalities: the batch (B rows) and what deferred
    flow needs (B = 1: the decoded frames and the sample's frame indices)."""

    videos: list[str]
    batch: dict[str, Any]
    decoded: Any = None
    indices: np.ndarray | None = None  # (K, T) frame indices of the sample
    seconds: dict[str, float] = field(default_factory=dict)
    margins: torch.Tensor | None = None  # (B, K, M) the policy's logit(p_use)
    flow_fields: int = 0  # optical flow fields computed

    @property
    def video(self) -> str:
        return self.videos[0]


def prediction_dataset(videos: Sequence[str | Path], spec: ModelSpec, flow: str | None = None) -> VideoDataset:
    """The evaluation samples of ``videos`` for a model: decoded straight from the files,
    keeping only the frames a sample reads, with every input the model reads (flow included,
    computed with ``flow``, by default the method it was trained with). Needs no network, so
    decoding can run elsewhere (a Ray task) than the model; :meth:`Predictor.prepare_samples`
    takes its samples."""
    cfg = spec.cfg
    decode = cfg.data.decode
    needed = spec.input_modalities()
    if any(MODALITIES[m].reads == "flow" for m in needed):
        decode = dataclasses.replace(decode, flow=flow or training_flow_method(cfg))
    entries = [VideoEntry(path=Path(v), labels=[0], source=str(v)) for v in videos]
    return VideoDataset(entries, spec.class_names, modalities=needed, clip=cfg.data.clip, decode=decode,
                        train=False, cache=None, num_segments=cfg.data.eval_segments, stream=True)


def training_flow_method(cfg) -> str:
    """The optical flow a model was trained on: ``data.decode.flow`` of its config; a model
    trained from precomputed flow images (the official frame-folder layout, no method in the
    config) saw the reference's TV-L1."""
    return cfg.data.decode.flow or "tvl1"


class Predictor:
    """A trained model ready to predict: ``prepare*`` -> ``decide`` -> ``finish_all`` (or ``run``)."""

    def __init__(self, loaded: LoadedModel, *, device: str = "cpu", plan: ExecutionPlan | None = None) -> None:
        self.loaded = loaded
        self.kind = loaded.kind
        self.adaptive = loaded.stage.adaptive
        self.model_cfg = loaded.model_cfg
        self.cfg = loaded.cfg
        self.class_names = list(loaded.class_names)
        self.modalities = list(loaded.model_cfg.modalities)
        self.plan = plan or ExecutionPlan.for_device(device)
        self.model = self.plan.prepare(loaded.network)
        self.device = torch.device(self.plan.device)
        self.costs = modality_costs(self.model_cfg, self.cfg.data.clip)
        self.policy_cost = self.costs["policy"] if self.adaptive else 0.0
        decode = dataclasses.replace(self.cfg.data.decode)
        needed = loaded.input_modalities()
        self.flow_method = training_flow_method(self.cfg)
        # Flow is deferred when the policy does not look at it: it is cut per selected segment.
        self.defer_flow = "flow" in needed and not (self.adaptive and self.model_cfg.policy.flow_proxy == "flow")
        # Inputs only the policy reads are computed on the frames it reads (every other frame
        # of a segment), not on all T: at paper size the policy's RGB difference was the
        # costliest thing `prepare` did (10 x 8 x 15 x 224² floats per video).
        self.frame_subsets = policy_frame_subsets(self.model_cfg, self.cfg.data.clip, needed)
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

    # ------------------------------------------------------------------ the ways in

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def prepare(self, video: str | Path) -> Prepared:
        """Decode once and cut RGB / RGB difference / spectrogram (and flow if the policy needs it)."""
        entry = VideoEntry(path=Path(video), labels=[0], source=str(video))
        dataset = _SampleDataset([entry], self.class_names, modalities=self.needed, clip=self.cfg.data.clip,
                                 decode=self.decode, train=False, cache=None,
                                 num_segments=self.cfg.data.eval_segments, stream=True,
                                 frame_subsets=self.frame_subsets)
        start = time.perf_counter()
        sample = dataset[0]
        total = time.perf_counter() - start
        decoded = dataset.last
        indices = sample_indices(decoded.num_frames, dataset._sampling_clip, False, None,
                                 num_segments=dataset.num_segments)
        seconds = {"decode": dataset.decode_seconds, "modalities": total - dataset.decode_seconds}
        return Prepared([str(video)], self._to_device(default_collate([sample])), decoded, indices, seconds)

    def prepare_window(self, window, video: str) -> Prepared:
        """One window of decoded media (:class:`~adamml.inference.windows.Window`: a window of
        a long file, or arrays given as a whole clip), cut as a dataset cuts a file."""
        from adamml.inference.windows import window_sample  # windows imports this module

        start = time.perf_counter()
        batch, indices = window_sample(window, self.needed, self.cfg.data.clip, self.cfg.data.eval_segments
                                       or self.cfg.data.clip.num_segments, self.flow_method, self.frame_subsets)
        seconds = {"modalities": time.perf_counter() - start}
        return Prepared([video], self._to_device(batch), window, indices, seconds)

    def prepare_samples(self, samples: list[dict[str, Any]]) -> Prepared:
        """A batch of :func:`prediction_dataset` samples (every input already computed)."""
        batch = self._to_device(default_collate(samples))
        return Prepared([str(s["video"]) for s in samples], batch)

    # ------------------------------------------------------------------ deciding

    def _segments(self, prepared: Prepared) -> int:
        return int(next(prepared.batch[m] for m in self.needed if m in prepared.batch).shape[1])

    def decide(self, prepared: Prepared) -> torch.Tensor | None:
        """Run the policy: (B, K, M) margins (logit of "use"); None for fixed networks."""
        if not self.adaptive:
            return None
        start = time.perf_counter()
        with self.plan.context():
            out = self.model.policy(self.model.policy.policy_inputs(prepared.batch), temperature=1.0, sample=False)
        prepared.margins = use_margins(out.logits.float()).cpu()
        prepared.seconds["policy"] = time.perf_counter() - start
        return prepared.margins

    def decisions(self, prepared: Prepared, thresholds: Thresholds | None = None) -> torch.Tensor:
        """(B, K, M) decisions in {0, 1}: the thresholds on the margins, without them the ones
        the policy carries (0: its argmax); all ones for a fixed network."""
        if not self.adaptive:
            return torch.ones(len(prepared.videos), self._segments(prepared), len(self.modalities))
        if prepared.margins is None:
            self.decide(prepared)
        margins = prepared.margins
        return thresholds.decide(margins) if thresholds is not None else self.model.policy.decide(margins)

    def fit_budget(self, prepared: Sequence[Prepared], budget: Budget) -> Thresholds | None:
        """Thresholds meeting ``budget`` on average over ``prepared`` (None for a fixed network:
        it has no policy to move)."""
        if not self.adaptive or not prepared:
            return None
        margins = torch.cat([p.margins if p.margins is not None else self.decide(p) for p in prepared])
        per_seg = [self.costs[m] for m in self.modalities]
        fusion = sum(per_seg) * margins.shape[1]
        return fit_thresholds(margins, per_seg, self.costs["policy"], budget.gflops(fusion), self.modalities,
                              self.model.policy.allocation)

    def add_flow(self, prepared: Prepared, segments: np.ndarray) -> None:
        """Flow tensors for the given segments only (zeros elsewhere, never read); B = 1."""
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

    # ------------------------------------------------------------------ the way out

    def forward(self, prepared: Prepared, decisions: torch.Tensor):
        """Flow where selected (when deferred), then the selected networks and fusion."""
        if self.defer_flow and "flow" not in prepared.batch:
            self.add_flow(prepared, decisions[0, :, self.modalities.index("flow")].nonzero().flatten().numpy())
        start = time.perf_counter()
        with self.plan.context():
            if self.adaptive:
                out = self.model(prepared.batch, mode="conditional", decisions=decisions.to(self.device))
            else:
                out = self.model(prepared.batch)
        prepared.seconds["networks"] = time.perf_counter() - start
        return out

    def finish_all(self, prepared: Prepared, thresholds: Thresholds | None = None, topk: int = 5) -> list[Prediction]:
        """Decisions, flow where selected, the selected networks, fusion: one Prediction per row."""
        decisions = self.decisions(prepared, thresholds)
        logits = self.forward(prepared, decisions).logits.float().cpu()
        gflops = gflops_per_video(decisions.double().numpy(), [self.costs[m] for m in self.modalities],
                                  self.policy_cost)
        probs = torch.softmax(logits, dim=-1)
        scores, idx = probs.topk(min(topk, probs.shape[-1]), dim=-1)
        missing = prepared.batch.get("audio_missing")
        missing = torch.zeros(len(prepared.videos), dtype=torch.bool) if missing is None else torch.as_tensor(missing)
        return [
            Prediction(
                video=video,
                top=[(self.class_names[j], float(s)) for s, j in zip(scores[b].tolist(), idx[b].tolist(), strict=True)],
                segments=[[m for m, d in zip(self.modalities, row, strict=True) if d > 0.5] for row in decisions[b].tolist()],
                gflops=gflops[b],
                audio_missing=bool(missing.reshape(len(prepared.videos), -1)[b].any()),
                seconds={s: prepared.seconds.get(s, 0.0) for s in STAGES},
                flow_fields=prepared.flow_fields,
            )
            for b, video in enumerate(prepared.videos)
        ]

    def finish(self, prepared: Prepared, thresholds: Thresholds | None = None, topk: int = 5) -> Prediction:
        """:meth:`finish_all` of one video."""
        (prediction,) = self.finish_all(prepared, thresholds, topk)
        return prediction

    def run(self, video: str | Path, thresholds: Thresholds | None = None, topk: int = 5) -> Prediction:
        """The whole of one video (what ``adamml predict`` does per file)."""
        prepared = self.prepare(video)
        self.decide(prepared)
        return self.finish(prepared, thresholds, topk)

    def features(self, prepared: Prepared) -> dict[str, torch.Tensor]:
        """Each sub-network's (B, K, D) features on every segment (flow computed everywhere)."""
        if self.defer_flow and "flow" not in prepared.batch:
            self.add_flow(prepared, np.arange(self._segments(prepared)))
        out = {}
        with self.plan.context():
            for m in self.modalities:
                x = prepared.batch[m]
                _, feats = self.model.recognition[m](rearrange(x, "b k ... -> (b k) ..."))
                out[m] = rearrange(feats.float().cpu(), "(b k) d -> b k d", b=x.shape[0])
        return out
