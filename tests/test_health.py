"""No silent collapse: the run's summary says when AdaMML is below its best single modality or
the policy (almost) never runs a modality, with the numbers and the likely fix."""

from __future__ import annotations

from adamml.evaluation.health import collapse_warnings
from adamml.evaluation.report import MethodResult


def rows(adamml_acc: float, audio_rate: float, rgb_rate: float, rgb_acc: float = 18.3, gflops: float = 0.17) -> list:
    return [
        MethodResult("Audio", 13.3, selection={"audio": 100.0}, gflops=0.01),
        MethodResult("RGB", rgb_acc, selection={"rgb": 100.0}, gflops=0.32),
        MethodResult("Weighted fusion", 20.8, selection={"audio": 100.0, "rgb": 100.0}, gflops=0.33),
        MethodResult("AdaMML", adamml_acc, selection={"audio": audio_rate, "rgb": rgb_rate}, gflops=gflops),
    ]


def test_a_collapsed_run_is_reported_with_numbers_and_fixes():
    # A collapsed own-data run: AdaMML 10.8 % at audio 0.4 % / RGB 14.0 %, RGB 18.3 %, 10 classes.
    lines = collapse_warnings(rows(10.8, 0.4, 14.0), num_classes=10)
    text = "\n".join(lines)
    assert "AdaMML 10.8% is below its best single modality (RGB 18.3%)" in text
    assert "AdaMML runs audio on only 0.4% of segments" in text
    assert "Audio reaches only 13.3% after stage 1 (chance 10.0%)" in text
    assert "train stage 1 longer" in text
    assert not any("runs rgb" in line for line in lines)  # 14 % is a choice, not a collapse


def test_a_healthy_run_gets_no_warning():
    healthy = rows(66.7, 96.0, 45.0, rgb_acc=58.3)
    healthy[0].accuracy = 25.0
    assert collapse_warnings(healthy, num_classes=10) == []


def test_a_missed_budget_is_reported():
    healthy = rows(66.7, 96.0, 45.0, rgb_acc=58.3, gflops=0.25)
    healthy[0].accuracy = 25.0
    (line,) = collapse_warnings(healthy, num_classes=10, budget=0.5)
    assert "75.8% of Weighted fusion's 0.3300, not the 50% budget" in line
    assert collapse_warnings(healthy, num_classes=10, budget=0.75) == []


def test_a_dropped_weak_modality_under_a_budget_names_the_budget_and_the_modalitys_own_accuracy():
    # F1 (docs/own-data.md): trained to 0.5, the kept policy ran RGB on 0 % of segments.
    run = [
        MethodResult("Audio", 81.0, selection={"audio": 100.0}, gflops=0.123),
        MethodResult("RGB", 24.0, selection={"rgb": 100.0}, gflops=0.125),
        MethodResult("Weighted fusion", 81.0, selection={"audio": 100.0, "rgb": 100.0}, gflops=0.2485),
        MethodResult("AdaMML", 81.0, selection={"audio": 66.25, "rgb": 0.0}, gflops=0.1241, adaptive=True),
    ]
    (line,) = collapse_warnings(run, num_classes=10, budget=0.5)
    assert "runs rgb on only 0.0% of segments" in line
    assert "(RGB alone 24.0% against Audio's 81.0%: it adds little for its cost)" in line
    assert "likely fix: raise --budget," in line and "cost_weights" not in line
    (unbudgeted,) = collapse_warnings(run, num_classes=10)
    assert "lower train.adamml.cost_weights.rgb or raise --budget" in unbudgeted


def test_an_all_silent_dataset_is_told_to_drop_audio_not_to_train_longer():
    # Every track silent: the audio network guesses (25 % of 4 classes), AdaMML below RGB, the
    # policy rightly skips audio. Training stage 1 longer cannot help there.
    run = [
        MethodResult("Audio", 25.0, selection={"audio": 100.0}, gflops=0.01),
        MethodResult("RGB", 75.0, selection={"rgb": 100.0}, gflops=0.32),
        MethodResult("Weighted fusion", 75.0, selection={"audio": 100.0, "rgb": 100.0}, gflops=0.33),
        MethodResult("AdaMML", 62.5, selection={"audio": 0.5, "rgb": 60.0}, gflops=0.2),
    ]
    assert any("train stage 1 longer" in line for line in collapse_warnings(run, num_classes=4))
    reason = "all 8 training videos have no sound (8 silent)"
    lines = collapse_warnings(run, num_classes=4, silent={"audio": reason})
    text = "\n".join(lines)
    assert f"Audio carries no signal: {reason}" in lines[0]
    assert "(Audio 25.0% after stage 1, chance 25.0%)" in lines[0]
    assert "drop it (model.modalities=[rgb])" in lines[0]
    assert "likely fix: drop audio" in text
    assert "train stage 1 longer" not in text and "runs audio on only" not in text


def test_silent_inputs_reads_the_cached_tracks_and_stops_at_the_first_with_sound(tmp_path):
    import numpy as np
    from media import make_video, moving_frames

    from adamml.config_files import load_config
    from adamml.data.cache import VideoCache
    from adamml.data.catalog import discover
    from adamml.data.extract import extract_videos
    from adamml.data.writer import write_video
    from adamml.evaluation.health import silent_inputs

    root = tmp_path / "data"
    for name in ("bee", "cow"):
        (root / "train" / name).mkdir(parents=True)
        make_video(root / "train" / name / "no_track.mp4", num_frames=16, fps=8.0, height=40, width=40, audio_channels=None)
        write_video(root / "train" / name / "silent.mp4", moving_frames(16, 40, 40), 8.0,
                    np.zeros(16000 * 2, np.float32), 16000)
    cfg = load_config("tiny", [f"data.root={root}", "model.num_classes=2"])
    cache = VideoCache(root / "cache", cfg.data.decode)
    extract_videos(discover(root, "train")[0], cache, progress=False)
    assert silent_inputs(cfg) == {"audio": "all 4 training videos have no sound (2 without an audio track, 2 silent)"}
    assert silent_inputs(load_config("tiny", [f"data.root={root}", "model.num_classes=2", "model.modalities=[rgb]",
                                              "train.adamml.cost_weights={rgb: 1.0}"])) == {}
    make_video(root / "train" / "cow" / "sound.mp4", num_frames=16, fps=8.0, height=40, width=40)
    extract_videos(discover(root, "train")[0], cache, progress=False)
    assert silent_inputs(cfg) == {}


def test_the_run_summary_and_evaluate_name_silent_audio(tmp_path):
    import dataclasses

    import numpy as np
    from media import moving_frames

    from adamml.config import to_dict
    from adamml.config_files import load_config
    from adamml.data.cache import VideoCache
    from adamml.data.catalog import discover
    from adamml.data.extract import extract_videos
    from adamml.data.writer import write_video
    from adamml.evaluation.health import checkpoint_context
    from adamml.runtime.checkpoint import save_checkpoint
    from adamml.training.run import run_verdict

    root = tmp_path / "data"
    for c, name in enumerate(("bee", "cow", "elk", "fox")):
        (root / "train" / name).mkdir(parents=True)
        write_video(root / "train" / name / "a.mp4", moving_frames(16, 40, 40, seed=c), 8.0, np.zeros(32000, np.float32), 16000)
    cfg = load_config("tiny", [f"data.root={root}", f"train.output_dir={tmp_path / 'run'}"])
    extract_videos(discover(root, "train")[0], VideoCache(root / "cache", cfg.data.decode), progress=False)
    stages = {"unimodal_audio": ("unimodal", ["audio"], 0.25), "unimodal_rgb": ("unimodal", ["rgb"], 0.75),
              "adamml": ("adamml", ["rgb", "audio"], 0.5)}
    for folder, (kind, modalities, score) in stages.items():
        model = dataclasses.replace(cfg.model, modalities=modalities)
        save_checkpoint({"kind": kind, "config": to_dict(cfg), "model_config": to_dict(model),
                         "metrics": {"score": score, "gflops": 0.1, "selection_audio": 0.01}},
                        tmp_path / "run" / folder / "best.pt")
    summary = "\n".join(run_verdict(cfg))
    assert "WARNING: Audio carries no signal: all 4 training videos have no sound (4 silent)" in summary
    assert "train stage 1 longer" not in summary
    assert checkpoint_context([tmp_path / "run" / "adamml" / "best.pt"])["silent"] == {
        "audio": "all 4 training videos have no sound (4 silent)"}
