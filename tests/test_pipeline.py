"""The staged predictor: optical flow is computed only for the segments whose flow network
the policy selected, and equals what decoding with flow gives there; every stage is timed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from adamml.config_files import load_config
from adamml.data.datasets import VideoDataset
from adamml.data.types import VideoEntry
from adamml.inference.pipeline import STAGES, Predictor
from adamml.models.adamml import build_adamml
from adamml.models.build import LoadedModel
from adamml.models.thresholds import Thresholds, use_margins

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny_video(tmp_path: Path) -> Path:
    """4 s at 25 fps (32 frames at the tiny config's 8 fps): the 4 segments do not overlap."""
    from media import make_video

    return make_video(tmp_path / "four_seconds.mp4", num_frames=100, fps=25.0)


@pytest.fixture(scope="module")
def flow_setup():
    cfg = load_config("tiny", ["model.modalities=[rgb,flow]", "data.decode.flow=dis"])
    torch.manual_seed(0)
    model = build_adamml(cfg.model, cfg.data.clip).eval()
    return model, cfg


def predictor(flow_setup) -> Predictor:
    model, cfg = flow_setup
    return Predictor(LoadedModel("adamml", cfg.model, cfg, ["a", "b", "c", "d"], network=model), device="cpu")


def forced(rgb: bool, flow: bool) -> Thresholds:
    """Thresholds that select a modality everywhere (-inf) or nowhere (+inf)."""
    return Thresholds(("rgb", "flow"), (-1e9 if rgb else 1e9, -1e9 if flow else 1e9), 0.0)


def test_flow_is_computed_only_for_selected_segments(flow_setup, tiny_video: Path) -> None:
    p = predictor(flow_setup)
    prepared = p.prepare(tiny_video)
    assert "flow" not in prepared.batch and "rgbdiff" in prepared.batch  # the policy's proxy
    counts = {}
    for name, segments in {"none": [], "one": [1], "all": [0, 1, 2, 3]}.items():
        p.add_flow(prepared, torch.tensor(segments, dtype=torch.long).numpy())
        counts[name] = prepared.flow_fields
    assert counts["none"] == 0
    assert 0 < counts["one"] < counts["all"]
    assert counts["one"] <= flow_setup[1].data.clip.frames_per_segment * flow_setup[1].data.clip.stack_length


def test_deferred_flow_equals_flow_computed_while_decoding(flow_setup, tiny_video: Path) -> None:
    model, cfg = flow_setup
    p = predictor(flow_setup)
    prepared = p.prepare(tiny_video)
    p.add_flow(prepared, torch.tensor([0, 2]).numpy())
    decode = dataclasses.replace(cfg.data.decode, flow="dis")
    full = VideoDataset([VideoEntry(path=tiny_video, labels=[0])], ["a", "b", "c", "d"], modalities=["rgb", "flow", "rgbdiff"],
                        clip=cfg.data.clip, decode=decode, train=False, num_segments=cfg.data.eval_segments, stream=True)[0]
    got = prepared.batch["flow"][0]
    torch.testing.assert_close(got[[0, 2]], full["flow"][[0, 2]])
    assert not got[[1, 3]].any()  # never computed, never read
    torch.testing.assert_close(prepared.batch["rgb"][0], full["rgb"])


def test_the_policys_rgb_difference_is_computed_on_its_frames_only(flow_setup, tiny_video: Path) -> None:
    model, cfg = flow_setup
    p = predictor(flow_setup)
    prepared = p.prepare(tiny_video)
    frames = p.model.policy.frame_indices
    assert prepared.batch["rgbdiff"].shape[2] == len(frames) < cfg.data.clip.frames_per_segment
    # The same values as computing every frame and letting the policy pick its own.
    full = VideoDataset([VideoEntry(path=tiny_video, labels=[0])], ["a", "b", "c", "d"], modalities=["rgb", "rgbdiff"],
                        clip=cfg.data.clip, decode=p.decode, train=False, num_segments=cfg.data.eval_segments,
                        stream=True)[0]
    torch.testing.assert_close(prepared.batch["rgbdiff"][0], full["rgbdiff"][:, frames])
    margins = p.decide(prepared)
    batch = {k: v[None] for k, v in full.items() if isinstance(v, torch.Tensor)}
    with torch.inference_mode():
        whole = p.model.policy(p.model.policy.policy_inputs(batch), temperature=1.0, sample=False)
    torch.testing.assert_close(margins, use_margins(whole.logits.float()), rtol=1e-5, atol=1e-5)
    assert prepared.batch["rgbdiff_frames"].tolist() == [frames]  # the batch says which frames it holds


def test_predict_runs_flow_only_where_the_decisions_say(flow_setup, tiny_video: Path) -> None:
    p = predictor(flow_setup)
    without = p.run(tiny_video, thresholds=forced(rgb=True, flow=False))
    with_flow = p.run(tiny_video, thresholds=forced(rgb=True, flow=True))
    assert without.flow_fields == 0 and all(s == ["rgb"] for s in without.segments)
    assert with_flow.flow_fields > 0 and all(s == ["rgb", "flow"] for s in with_flow.segments)
    assert with_flow.gflops > without.gflops
    assert set(with_flow.seconds) == set(STAGES) and all(v >= 0 for v in with_flow.seconds.values())
    default = p.run(tiny_video)  # the policy's own argmax decisions
    selected = sum("flow" in s for s in default.segments)
    assert (default.flow_fields == 0) == (selected == 0)


def test_predict_without_a_budget_uses_the_thresholds_the_policy_carries(tiny_video: Path) -> None:
    cfg = load_config("tiny")
    torch.manual_seed(0)
    model = build_adamml(cfg.model, cfg.data.clip).eval()
    p = Predictor(LoadedModel("adamml", cfg.model, cfg, ["a", "b", "c", "d"], network=model), device="cpu")
    plain = p.run(tiny_video)
    margins = p.decide(p.prepare(tiny_video))[0]  # (K, M)
    try:
        # A threshold over every margin of the first modality: it never runs; the other as before.
        model.policy.use_thresholds[0] = float(margins[:, 0].max()) + 1.0
        moved = p.run(tiny_video)
    finally:
        model.policy.use_thresholds.zero_()
    first, second = cfg.model.modalities
    assert all(first not in s for s in moved.segments)
    assert [second in s for s in moved.segments] == [second in s for s in plain.segments]
    assert [second in s for s in plain.segments] == (margins[:, 1] > 0).tolist()
