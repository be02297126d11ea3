"""Live AdaMML: the policy stepped segment by segment, the segment clock, back-pressure and
the budget held over time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from adamml.config import ClipSettings, ModelConfig, PolicyConfig
from adamml.errors import AdamMLError
from adamml.models.policy import build_policy

pytestmark = pytest.mark.usefixtures("one_thread")


def _calibrated_policy(clip: ClipSettings, batch: dict[str, torch.Tensor], joint: str = "adamml"):
    torch.manual_seed(0)
    cfg = ModelConfig(modalities=["rgb", "audio"], backbones={"rgb": "resnet_tiny", "audio": "mobilenet_v2_tiny"},
                      num_classes=5, policy=PolicyConfig(backbone="mobilenet_v2_tiny", frames=2, resolution=24,
                                                         joint_dim=32, hidden_size=16, joint=joint))
    policy = build_policy(cfg, clip)
    for m in policy.modules():  # batch-norm statistics from the batch: random nets otherwise say the same
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    policy.train()
    with torch.no_grad():
        policy(policy.policy_inputs(batch), temperature=1.0)
    return policy.eval()


@pytest.mark.parametrize("joint", ["adamml", "reference"])  # reference: the paper configs' joint head
def test_policy_stepped_k_times_equals_forward_over_k_segments(joint: str) -> None:
    clip = ClipSettings(num_segments=6, frames_per_segment=4, stack_length=0, crop_size=24)
    g = torch.Generator().manual_seed(1)
    batch = {"rgb": torch.randn(3, 6, 4, 3, 24, 24, generator=g), "audio": torch.randn(3, 6, 1, 32, 32, generator=g)}
    policy = _calibrated_policy(clip, batch, joint)
    inputs = policy.policy_inputs(batch)
    with torch.no_grad():
        margins = policy(inputs, temperature=1.0, sample=False).logits.diff(dim=-1)[..., 0]
        # Thresholds on, at each modality's median margin: they must apply per step too.
        policy.use_thresholds.copy_(margins.flatten(0, 1).median(dim=0).values)
        whole = policy(inputs, temperature=1.0, sample=False)
        features = policy.joint_features(inputs)
        state, steps = None, []
        for k in range(6):
            out, state = policy.step(features[:, k], state)
            steps.append(out)
    logits = torch.cat([o.logits for o in steps], dim=1)
    torch.testing.assert_close(logits, whole.logits, rtol=0, atol=1e-6)
    assert torch.equal(torch.cat([o.decisions for o in steps], dim=1), whole.decisions)
    torch.testing.assert_close(torch.cat([o.probs for o in steps], dim=1), whole.probs, rtol=0, atol=1e-6)
    assert 0 < whole.decisions.mean() < 1  # both kinds of decision occur, so the thresholds mattered


def test_policy_stepped_on_one_segment_at_a_time_matches_forward_up_to_rounding() -> None:
    """A stream extracts each segment's features on its own (batch B, not B x K): the same
    function, so equal up to the rounding of differently sized convolutions."""
    from numerics import assert_same_function

    clip = ClipSettings(num_segments=4, frames_per_segment=4, stack_length=0, crop_size=24)
    g = torch.Generator().manual_seed(2)
    batch = {"rgb": torch.randn(2, 4, 4, 3, 24, 24, generator=g), "audio": torch.randn(2, 4, 1, 32, 32, generator=g)}
    policy = _calibrated_policy(clip, batch)
    inputs = policy.policy_inputs(batch)
    with torch.no_grad():
        whole = policy(inputs, temperature=1.0, sample=False)
        state, logits = None, []
        for k in range(4):
            out, state = policy.step(policy.joint_features({s: x[:, k : k + 1] for s, x in inputs.items()})[:, 0], state)
            logits.append(out.logits)
    assert_same_function(torch.cat(logits, dim=1), whole.logits)


# ---- the segment clock against predict --window ------------------------------------------

FPS, RATE = 8, 8000


@pytest.fixture(scope="module")
def bundle():
    """An untrained tiny RGB + audio AdaMML, batch norm set from data so its outputs differ."""
    from adamml.config_files import load_config
    from adamml.models.adamml import build_adamml

    # An audio window of 0.8 s and 4 frames at stride 2: a live segment is the clip's 7 frames.
    cfg = load_config("tiny", [f"data.decode.fps={FPS}", "data.decode.short_side=32", f"data.decode.sample_rate={RATE}",
                               "data.clip.audio_window_s=0.8", "model.modalities=[rgb,audio]"])
    torch.manual_seed(0)
    model = build_adamml(cfg.model, cfg.data.clip)
    g = torch.Generator().manual_seed(3)
    batch = {"rgb": torch.rand(4, 4, 4, 3, 32, 32, generator=g) * 4 - 2,
             "audio": torch.randn(4, 4, 1, 64, 64, generator=g) * 3 - 6}
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(batch, mode="masked")
    model.eval()
    from adamml.models.build import LoadedModel

    return LoadedModel("adamml", cfg.model, cfg, ["low", "mid", "high", "none"], network=model)


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    from media import make_video

    return make_video(tmp_path_factory.mktemp("live") / "clip.mp4", num_frames=56, fps=FPS, height=48, width=64,
                      sample_rate=RATE, freq=700.0)


def test_window_mode_on_a_paced_clip_equals_predict_window(bundle, clip_file) -> None:
    """4 segments of 7 frames = one 3.5 s window of predict --window, whose evaluation clips
    start at frames 0, 7, 14, 21 (linspace over the window): the same frames, the same audio
    windows, so the same decisions, and the window's score equals the live window's running
    score after its 4th segment."""
    from numerics import assert_same_function

    from adamml.inference.live import run_live
    from adamml.inference.pipeline import Predictor
    from adamml.inference.windows import predict_windows

    timeline = predict_windows(clip_file, Predictor(bundle), window_s=3.5)
    run = run_live(bundle, str(clip_file), mode="window", window=4, pace=8.0, on_full="block", follow_idle_s=0.2)
    events = list(run)
    assert [e.index for e in events] == list(range(8))
    assert [(e.start_s, e.end_s) for e in events[:2]] == [(0.0, 0.875), (0.875, 1.75)]
    live_segments = [[m for m, d in e.decisions.items() if d] for e in events]
    assert live_segments == [s for w in timeline.windows for s in w.segments]
    assert len({tuple(s) for s in live_segments}) > 1  # the policy does not say the same everywhere
    for w, last in enumerate((events[3], events[7])):
        assert_same_function(torch.from_numpy(last.running_scores), torch.from_numpy(timeline.scores[w]).float())
    assert run.summary.segments == 8 and run.summary.dropped_frames == 0
    gflops = [sum(e.gflops for e in events[4 * w : 4 * w + 4]) for w in range(2)]
    assert gflops == pytest.approx([w.gflops for w in timeline.windows], rel=1e-6)


# ---- back-pressure, lag, source errors ---------------------------------------------------


def test_when_compute_falls_behind_segments_are_dropped_counted_and_nothing_queues(bundle, clip_file) -> None:
    """Each segment's compute is made 3x slower than the stream: the lag rises, whole
    segments are dropped (their frames counted) and at most 2 ever wait, so the lag stays
    bounded."""
    from adamml.inference.live import run_live

    run = run_live(bundle, str(clip_file), pace=4.0, simulate_compute_s=0.6, queue_segments=2, follow_idle_s=0.2)
    events = list(run)
    summary = run.summary
    assert summary.dropped_segments > 0
    assert summary.dropped_frames == 7 * summary.dropped_segments
    assert len(events) + summary.dropped_segments == 8  # every segment scored or counted as dropped
    assert summary.queue_peak <= 2
    lags = [e.lag_s for e in events]
    assert max(lags) > 0.5  # behind the stream (unthrottled, this model keeps up) ...
    assert max(lags) <= 3 * max(e.compute_s for e in events) + 0.5  # ... by a bounded amount: two queued + one computing
    assert summary.realtime_fraction > 1.0  # it could not keep up, and says so
    assert [e.dropped_frames for e in events] == sorted(e.dropped_frames for e in events)
    # The reader saw it was behind (the queue full as a segment began) and dropped those
    # frames before converting them.
    assert 0 < summary.dropped_unconverted <= summary.dropped_frames
    assert summary.dropped_unconverted % 7 == 0


def test_the_plan_at_start_says_whether_the_model_keeps_up_or_the_span_it_would(bundle, clip_file) -> None:
    """Measured on the model's own networks before the stream is read: the tiny model keeps
    up with 7 s segments (a margin any loaded machine meets); throttled to 0.6 s a segment on a 4x replay (0.22 s of
    wall time a segment) it cannot, and names a span it keeps up with; at that span the
    throttled run drops nothing."""
    import dataclasses

    from adamml.inference.live import KEEP_UP_SHARE, run_live

    fast = run_live(bundle, str(clip_file), pace=1.0, span_s=7.0).plan
    assert fast.keeps_up and fast.segment_s == 7.0 and fast.min_span_s == 7.0
    assert set(fast.parts_s) == {"inputs", "policy", "rgb", "audio"}
    assert fast.compute_s == pytest.approx(sum(fast.parts_s.values()), abs=1e-3)  # every modality on (rate 1)
    assert fast.describe().startswith("keeps up: compute ")
    slow = run_live(bundle, str(clip_file), pace=4.0, simulate_compute_s=0.6, expect={"rgb": 0.5}).plan
    assert not slow.keeps_up and slow.rates == {"rgb": 0.5, "audio": 1.0}
    assert slow.compute_s == pytest.approx(0.6 + slow.parts_s["inputs"] + slow.parts_s["policy"]
                                           + 0.5 * slow.parts_s["rgb"] + slow.parts_s["audio"], abs=1e-3)
    assert slow.min_span_s >= slow.compute_s * 4.0 / KEEP_UP_SHARE - 1e-9
    assert slow.min_span_s - 1 / FPS < slow.compute_s * 4.0 / KEEP_UP_SHARE  # the shortest whole-frame span
    line = slow.describe()
    assert line.startswith("cannot keep up at this span: compute ") and f"--span {slow.min_span_s:.2f}" in line
    assert dataclasses.replace(slow).resolve(slow.min_span_s, FPS).keeps_up  # the same compute, that span
    run = run_live(bundle, str(clip_file), pace=4.0, simulate_compute_s=0.6, span_s=slow.min_span_s,
                   follow_idle_s=0.2, plan=False)
    events = list(run)
    assert events[0].end_s - events[0].start_s == pytest.approx(round(slow.min_span_s * FPS) / FPS)
    assert run.summary.dropped_frames == 0
    with pytest.raises(AdamMLError, match="shorter than the model's own segment"):
        run_live(bundle, str(clip_file), span_s=0.5)


def test_max_lag_drops_what_would_be_scored_too_late(bundle, clip_file) -> None:
    from adamml.inference.live import run_live

    run = run_live(bundle, str(clip_file), pace=4.0, simulate_compute_s=0.6, queue_segments=8, max_lag_s=0.3,
                   follow_idle_s=0.2)
    events = list(run)
    assert run.summary.dropped_segments > 0
    # A segment is taken only while it is at most 0.3 s behind; then it computes (~0.6 s).
    assert all(e.lag_s - e.compute_s <= 0.3 + 0.05 for e in events)


def test_a_stream_that_breaks_off_keeps_the_events_before_the_error(bundle, tmp_path: Path, clip_file) -> None:
    """A source cut mid-stream: the events so far come out, then one StreamError line, and
    the summary holds the error."""
    from test_stream import cut_inside_a_video_packet, write_ts

    from adamml.data.stream import StreamError
    from adamml.inference.live import run_live

    whole = tmp_path / "whole.ts"
    assert write_ts(whole, 4.0).wait(timeout=30) == 0
    cut = cut_inside_a_video_packet(whole, tmp_path / "cut.ts", 2.5)
    run = run_live(bundle, str(cut), follow_idle_s=0.2)
    events = []
    with pytest.raises(StreamError, match=r"cut\.ts: the stream broke off"):
        for event in run:
            events.append(event)
    assert len(events) >= 1 and run.summary.segments == len(events)
    assert run.summary.error is not None and "\n" not in run.summary.error


# ---- the budget held over time -----------------------------------------------------------


def test_budget_controller_holds_the_running_mean_cost_after_a_minute() -> None:
    """A synthetic stream of margins whose scene changes twice (the policy wants more, then
    less): the cost over the sliding minute stays within 10 % of B after the first minute."""
    from adamml.inference.live import BudgetController

    costs, policy = [2.0, 0.5], 0.1
    span_s = 0.5
    target = 0.5 * sum(costs)
    controller = BudgetController(target, costs, policy, ["rgb", "audio"], horizon=int(60 / span_s))
    rng = np.random.default_rng(0)
    means = []
    for i in range(1200):  # 10 minutes of 0.5 s segments
        shift = (0.0, 2.0, -1.5)[i // 400]
        margins = torch.tensor(rng.normal([0.5 + shift, 1.0 + shift], 1.5))
        decisions = controller.thresholds.decide(margins[None, None])[0, 0]
        cost = policy + float((decisions.double() * torch.tensor(costs)).sum())
        controller.update(margins, cost)
        means.append(controller.mean)
    after_first_minute = np.array(means[120:])
    assert np.abs(after_first_minute / target - 1).max() < 0.10
    # It met the target by moving the thresholds, not by chance: the trained policy (0) overspends.
    assert controller.report()["gap"] == pytest.approx(controller.mean / target - 1, abs=1e-6)


def test_budget_on_a_live_run_reports_its_distance_from_b(bundle, clip_file) -> None:
    from adamml.inference.live import run_live
    from adamml.models.thresholds import parse_budget

    events = list(run_live(bundle, str(clip_file), budget=parse_budget("0.5"), on_full="block", follow_idle_s=0.2))
    fusion = events[0].budget["target_gflops"] / 0.5
    assert all(e.budget is not None for e in events)
    assert events[-1].budget["mean_gflops"] == pytest.approx(np.mean([e.gflops for e in events]), rel=1e-5)
    assert events[-1].budget["mean_gflops"] <= 1.25 * 0.5 * fusion  # held near B even over 8 segments


# ---- the command ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(bundle, tmp_path_factory) -> Path:
    from adamml.config import to_dict
    from adamml.runtime.checkpoint import save_checkpoint

    model, model_cfg, cfg, names = bundle.network, bundle.model_cfg, bundle.cfg, bundle.class_names
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint({"kind": "adamml", "model": model.state_dict(), "config": to_dict(cfg),
                     "model_config": to_dict(model_cfg), "class_names": names}, path)
    return path


def _live_command(*words: str) -> int:
    import argparse

    from adamml.commands import live

    parser = argparse.ArgumentParser()
    live.add_arguments(parser)
    return live.run(parser.parse_args(list(words)))


def test_live_command_prints_one_json_object_per_segment_and_records_the_timeline(
        checkpoint, clip_file, tmp_path: Path, capsys) -> None:
    import json

    png = tmp_path / "timeline.png"
    code = _live_command(str(clip_file), "--checkpoint", str(checkpoint), "--json", "--mode", "window", "4",
                         "--follow-idle", "0.2", "--record", str(png))
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    plan, segments, summary = lines[0]["plan"], lines[1:-1], lines[-1]["summary"]
    # Said first; whether this tiny model keeps up depends on the machine's load.
    assert plan["statement"].startswith("keeps up: compute" if plan["keeps_up"] else "cannot keep up at this span")
    assert plan["segment_s"] == 0.875 and plan["rates"] == {"rgb": 1.0, "audio": 1.0}
    assert [s["index"] for s in segments] == list(range(8))
    assert set(segments[0]) >= {"start_s", "end_s", "decisions", "gflops", "top", "running", "latency_s", "lag_s"}
    assert summary["segments"] == 8 and summary["error"] is None
    assert png.stat().st_size > 1000


def test_live_command_on_a_broken_stream_prints_the_events_then_one_line(checkpoint, tmp_path: Path, capsys) -> None:
    from test_stream import cut_inside_a_video_packet, write_ts

    whole = tmp_path / "whole.ts"
    assert write_ts(whole, 4.0).wait(timeout=30) == 0
    cut = cut_inside_a_video_packet(whole, tmp_path / "cut.ts", 2.5)
    code = _live_command(str(cut), "--checkpoint", str(checkpoint), "--follow-idle", "0.2")
    out, err = capsys.readouterr()
    assert code == 1
    assert out.count(" GFLOPs ") >= 2  # the segments before the break, then the summary
    assert err.strip().count("\n") == 0 and "cut.ts: the stream broke off" in err
    with pytest.raises(AdamMLError, match="--mode sideways"):
        _live_command(str(cut), "--checkpoint", str(checkpoint), "--mode", "sideways")


def test_ctrl_c_ends_the_live_command_with_its_summary(checkpoint, clip_file) -> None:
    import os
    import signal
    import subprocess
    import sys

    script = ("import argparse, sys\nfrom adamml.commands import live\np = argparse.ArgumentParser()\n"
              "live.add_arguments(p)\nsys.exit(live.run(p.parse_args(sys.argv[1:])))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", script, str(clip_file), "--checkpoint", str(checkpoint),
                             "--pace", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    plan = proc.stdout.readline()
    first = proc.stdout.readline()  # a segment came out: the run is under way
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert plan.startswith(("plan: keeps up", "plan: cannot keep up")) and " GFLOPs " in first
    assert proc.returncode == 0, err
    summary = out.strip().splitlines()[-1]
    assert "segments of" in summary and summary.endswith("interrupted")
    assert "Traceback" not in err


def test_predict_live_and_model_stream_give_the_live_commands_segments(checkpoint, clip_file, capsys) -> None:
    """``adamml predict --live`` is the live command; ``Model.stream`` yields the same events."""
    import json

    import adamml
    from adamml.cli import main

    words = ["--checkpoint", str(checkpoint), "--json", "--mode", "window", "4", "--follow-idle", "0.2"]
    assert main(["predict", "--live", str(clip_file), *words]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    segments = lines[1:-1]
    model = adamml.load(checkpoint)
    events = list(model.stream(clip_file, mode="window", window=4, follow_idle_s=0.2, on_full="block"))
    assert [e.to_json()["decisions"] for e in events] == [s["decisions"] for s in segments]
    assert main(["predict", "--live", str(clip_file), str(clip_file), "--checkpoint", str(checkpoint)]) == 2
    assert "--live reads one stream" in capsys.readouterr().err


def test_show_without_a_display_says_why_and_exits_before_reading(tmp_path: Path, monkeypatch, capsys) -> None:
    """Neither the checkpoint nor the source exist: the display is checked before either is
    read, with one line that says why and what writes the timeline instead."""
    from adamml.cli import main

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    code = main(["predict", "--live", str(tmp_path / "none.ts"), "--checkpoint", str(tmp_path / "none.pt"), "--show"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0
    assert "--show: no display" in err and "--record" in err


def test_the_live_timeline_draws_the_leading_classes_and_a_strip_per_modality(bundle, clip_file) -> None:
    from adamml.inference.live import draw_timeline, run_live

    events = list(run_live(bundle, str(clip_file), on_full="block", follow_idle_s=0.2, plan=False))
    image = draw_timeline(events, bundle.class_names, ["rgb", "audio"], segments=8, width=400)
    assert image.shape == (220 + 2 * 22 + 40, 400, 3) and image.dtype == np.uint8
    step = (400 - 150 - 10) / 8
    for row, m in enumerate(["rgb", "audio"]):  # the strip is dark where the modality ran
        centre_y = 220 + row * 22 + 11
        cells = [int(image[centre_y, int(150 + (i + 0.5) * step)].mean()) < 128 for i in range(8)]
        assert cells == [e.decisions[m] for e in events]
    assert (image[10:210, 151:389] != 255).any(axis=-1).sum() > 100  # the class curves
