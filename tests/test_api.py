"""The Python API: ``adamml.load(...)`` and its Model, and every way to predict agreeing with it:
the command line (``--json``, the batch engine ``--out``), a whole-video window, decoded arrays."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from media import make_garbage, make_video

import adamml
from adamml.config import DecodeSettings, to_dict
from adamml.config_files import load_config

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ["red", "green", "blue", "beep"]
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _save(folder: Path, kind: str, overrides: list[str] | None = None, seed: int = 0) -> Path:
    """An untrained tiny network saved as training saves it (prediction needs only the format)."""
    from adamml.models.build import build_model
    from adamml.runtime.checkpoint import save_checkpoint

    cfg = load_config("tiny", overrides or [])
    torch.manual_seed(seed)
    model = build_model(kind, cfg.model, cfg.data.clip)
    folder.mkdir(parents=True, exist_ok=True)
    return save_checkpoint({"kind": kind, "model": model.state_dict(), "config": to_dict(cfg),
                            "model_config": to_dict(cfg.model), "class_names": CLASSES}, folder / "best.pt")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder as training leaves it: a unimodal network, fusion and AdaMML."""
    root = tmp_path_factory.mktemp("run")
    _save(root / "unimodal_rgb", "unimodal", ["model.modalities=[rgb]"])
    _save(root / "fusion_weighted", "fusion")
    _save(root / "adamml", "adamml")
    return root


@pytest.fixture(scope="module")
def checkpoint(run_dir: Path) -> Path:
    return run_dir / "adamml" / "best.pt"


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """4 s at 25 fps (32 frames at the tiny config's 8 fps), with a 16 kHz tone."""
    return make_video(tmp_path_factory.mktemp("v") / "clip.mp4", num_frames=100, fps=25.0)


@pytest.fixture(scope="module")
def model(checkpoint: Path):
    return adamml.load(checkpoint)


def _scores(top) -> dict[str, float]:
    return {name: float(score) for name, score in top}


def test_the_documented_example_runs_as_written(checkpoint: Path, video: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """docs/api.md's first Python block, run verbatim in a folder holding a run and two videos."""
    import shutil

    text = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    example = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(example.strip().splitlines()) == 10
    (tmp_path / "runs" / "default" / "adamml").mkdir(parents=True)
    shutil.copy(checkpoint, tmp_path / "runs" / "default" / "adamml" / "best.pt")
    shutil.copy(video, tmp_path / "video.mp4")
    make_video(tmp_path / "other.mp4", num_frames=40, fps=10.0, seed=3)
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "docs/api.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(str(CLASSES)) and "GFLOPs" in printed[1] and printed[2].startswith("2 ")


def test_the_readme_example_runs_as_written(checkpoint: Path, video: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """README.md's Python block, run verbatim beside a run and the two videos it names."""
    import shutil

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = text.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "runs" / "default" / "adamml").mkdir(parents=True)
    shutil.copy(checkpoint, tmp_path / "runs" / "default" / "adamml" / "best.pt")
    shutil.copy(video, tmp_path / "video.mp4")
    make_video(tmp_path / "long.mkv", num_frames=120, fps=10.0, seed=4)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    printed = capsys.readouterr().out
    assert printed.startswith("[(") and "GFLOPs" not in printed  # the top classes, segments, GFLOPs
    assert namespace["result"].top[0][0] in CLASSES and namespace["result"].gflops > 0
    assert len(namespace["timeline"].windows) >= 1


def test_a_model_says_what_it_is(model) -> None:
    assert model.class_names == CLASSES and model.modalities == ["rgb", "audio"] and model.kind == "adamml"
    assert model.segments == 4 and model.adaptive
    assert set(model.gflops) == {"rgb", "audio", "policy"} and model.gflops["policy"] > 0
    assert model.plan.device == "cpu"
    assert model.thresholds.probabilities() == {"rgb": 0.5, "audio": 0.5}  # the trained argmax


def test_every_path_gives_the_same_prediction(checkpoint: Path, model, video: Path, tmp_path: Path, capsys) -> None:
    """load().predict, `adamml predict --json`, the batch engine (--out) and one window
    covering the whole video: the same classes, scores, decisions and GFLOPs."""
    from adamml.cli import main

    direct = model.predict(video, topk=4)
    assert main(["predict", str(video), "--checkpoint", str(checkpoint), "--json", "--topk", "4", "--device", "cpu"]) == 0
    (cli,) = json.loads(capsys.readouterr().out)["predictions"]
    out = tmp_path / "p.jsonl"
    assert main(["predict", str(video), "--checkpoint", str(checkpoint), "--out", str(out), "--topk", "4",
                 "--device", "cpu", "--no-progress"]) == 0
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    (window,) = model.predict_windows(video, seconds=60.0, topk=4).windows
    paths = {
        "cli": ([n for n, _ in cli["top"]], dict(cli["top"]), cli["segments"], cli["gflops"]),
        "batch": (record["classes"], dict(zip(record["classes"], record["scores"], strict=True)),
                  record["decisions"], record["gflops"]),
        "window": ([n for n, _ in window.top], dict(window.top), window.segments, window.gflops),
    }
    for name, (classes, scores, decisions, gflops) in paths.items():
        assert classes == [n for n, _ in direct.top], name
        assert scores == pytest.approx(_scores(direct.top), abs=1e-5), name
        assert decisions == direct.segments, name
        assert gflops == pytest.approx(direct.gflops, rel=1e-6), name


def test_decoded_arrays_give_the_files_prediction(model, video: Path) -> None:
    from adamml.data.video import decode_video

    raw = decode_video(video, DecodeSettings(fps=None, short_side=None, sample_rate=16000))
    from_file = model.predict(video, topk=4)
    from_arrays = model.predict(frames=raw.frames, fps=raw.fps, audio=raw.audio, sample_rate=16000, topk=4)
    assert [n for n, _ in from_arrays.top] == [n for n, _ in from_file.top]
    assert _scores(from_arrays.top) == pytest.approx(_scores(from_file.top), abs=1e-5)
    assert from_arrays.segments == from_file.segments and from_arrays.gflops == from_file.gflops


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"frames": np.zeros((8, 32, 32, 3), np.float32), "fps": 8.0}, "frames: expected dtype uint8"),
    ({"frames": np.zeros((8, 32, 32), np.uint8), "fps": 8.0}, "frames: expected shape"),
    ({"frames": np.zeros((8, 32, 32, 3), np.uint8), "fps": 0}, "fps"),
    ({"frames": np.zeros((8, 32, 32, 3), np.uint8), "fps": 8.0, "audio": np.zeros(800, np.float64),
      "sample_rate": 8000}, "audio: expected dtype float32"),
    ({"frames": np.zeros((8, 32, 32, 3), np.uint8), "fps": 8.0, "audio": np.zeros((800, 2), np.float32),
      "sample_rate": 8000}, "audio: expected mono"),
    ({"frames": np.zeros((8, 32, 32, 3), np.uint8), "fps": 8.0, "audio": np.zeros(800, np.float32),
      "sample_rate": 8000.5}, "sample_rate"),
])
def test_wrong_arrays_are_named(model, kwargs, named) -> None:
    with pytest.raises(adamml.AdamMLError, match=named):
        model.predict(**kwargs)


def test_a_fixed_network_reports_every_modality_on_every_segment(run_dir: Path, video: Path) -> None:
    fusion = adamml.load(run_dir / "fusion_weighted")
    p = fusion.predict(video)
    assert fusion.kind == "fusion" and not fusion.adaptive and fusion.thresholds is None
    assert p.segments == [["rgb", "audio"]] * 4
    assert p.gflops == pytest.approx(4 * (fusion.gflops["rgb"] + fusion.gflops["audio"]))
    assert fusion.gflops["policy"] == 0.0
    assert adamml.load(run_dir).kind == "adamml"  # a run folder: its last stage's best.pt


def test_a_budget_is_met_over_the_videos_that_decode(checkpoint: Path, model, video: Path, tmp_path: Path) -> None:
    videos = [make_video(tmp_path / f"v{i}.mp4", num_frames=48, fps=12.0, seed=i) for i in range(3)]
    broken = make_garbage(tmp_path / "broken.mp4")
    cheap = adamml.load(checkpoint, budget="30%")
    failures: list[tuple[str, str]] = []
    predictions = cheap.predict([videos[0], broken, *videos[1:]], failures=failures)
    assert [p.video for p in predictions] == [str(v) for v in videos]
    assert [v for v, _ in failures] == [str(broken)] and "broken.mp4" in failures[0][1]
    fusion = 4 * (model.gflops["rgb"] + model.gflops["audio"])
    assert np.mean([p.gflops for p in predictions]) <= 0.3 * fusion + 1e-9
    with pytest.raises(adamml.AdamMLError, match="broken.mp4"):
        cheap.predict([broken, videos[0]])


def test_predict_budget_keeps_the_good_videos_when_one_is_broken(checkpoint: Path, tmp_path: Path, capsys) -> None:
    from adamml.cli import main

    good = [make_video(tmp_path / f"g{i}.mp4", num_frames=32, fps=8.0, seed=i) for i in range(2)]
    bad = make_garbage(tmp_path / "bad.mp4")
    code = main(["predict", str(good[0]), str(bad), str(good[1]), "--checkpoint", str(checkpoint), "--budget", "0.5",
                 "--json", "--device", "cpu"])
    body = json.loads(capsys.readouterr().out)
    assert code == 1
    assert [p["video"] for p in body["predictions"]] == [str(v) for v in good]
    assert [f["video"] for f in body["failures"]] == [str(bad)]


def test_embed_gives_features_per_segment_and_modality(model, video: Path) -> None:
    embedding = model.embed(video)
    assert embedding.modalities == ["rgb", "audio"] and embedding.decisions.shape == (4, 2)
    for m in embedding.modalities:
        assert embedding.features[m].shape[0] == 4 and embedding.features[m].ndim == 2
        assert np.isfinite(embedding.features[m]).all()
    decided = model.predict(video).segments
    assert [[m for m, d in zip(embedding.modalities, row, strict=True) if d] for row in embedding.decisions] == decided


def test_unknown_runtimes_and_missing_checkpoints_are_refused(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(adamml.AdamMLError, match="runtime 'tensorrt'"):
        adamml.load(checkpoint, runtime="tensorrt")
    with pytest.raises(adamml.AdamMLError, match="runtime='onnx' reads an export folder"):
        adamml.load(checkpoint, runtime="onnx")  # a training checkpoint has no graphs
    with pytest.raises(adamml.AdamMLError, match="no such checkpoint"):
        adamml.load(tmp_path / "nothing.pt")
    with pytest.raises(adamml.AdamMLError, match="no best.pt"):
        adamml.load(tmp_path)
    with pytest.raises(adamml.AdamMLError, match="budget"):
        adamml.load(checkpoint, budget="abc")


def test_an_exported_folder_is_read_through_the_package_reader(checkpoint: Path, tmp_path: Path, monkeypatch, video) -> None:
    """A folder holding config.json + model.safetensors goes through adamml.export.package's
    read_package, whose checkpoint dict builds the same model."""
    import types

    from adamml.runtime.checkpoint import load_checkpoint

    folder = tmp_path / "exported"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    read = []
    package = types.ModuleType("adamml.export.package")
    package.read_package = lambda path: read.append(path) or load_checkpoint(checkpoint)
    monkeypatch.setitem(sys.modules, "adamml.export", types.ModuleType("adamml.export"))
    monkeypatch.setitem(sys.modules, "adamml.export.package", package)
    exported = adamml.load(folder)
    assert read == [folder] and exported.class_names == CLASSES
    assert exported.predict(video).segments == adamml.load(checkpoint).predict(video).segments


def test_import_adamml_does_not_import_torch() -> None:
    code = "import sys, adamml; assert 'torch' not in sys.modules and 'av' not in sys.modules; print(adamml.__all__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": SRC})
    assert out.returncode == 0, out.stderr
    assert "load" in out.stdout


# ----------------------------------------------------------------------------- predict --out


def test_predict_out_refuses_what_it_cannot_honour_one_line_each(checkpoint: Path, video: Path, tmp_path: Path, capsys) -> None:
    from adamml.cli import main

    out = tmp_path / "p.jsonl"
    common = ["predict", str(video), "--checkpoint", str(checkpoint), "--out", str(out), "--no-progress"]
    assert main([*common, "--budget", "abc", "--window", "-5"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "--budget" in lines[0] and "abc" in lines[0] and "--window" in lines[1]
    for option in (["--budget", "0.1"], ["--window", "5"], ["--profile"]):
        assert main([*common, *option]) == 2, option
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert option[0] in line
    assert main([*common, "--engine", "ray", "--budget", "0.1"]) == 2  # refused before Ray starts
    assert "--budget" in capsys.readouterr().err
    assert not out.exists()  # refused before anything was written
    assert main(["predict", str(video), "--checkpoint", str(checkpoint), "--window", "nan"]) == 2


def test_predict_out_honours_precision(checkpoint: Path, video: Path, tmp_path: Path, capsys) -> None:
    from adamml.cli import main

    out = tmp_path / "bf16.jsonl"
    assert main(["predict", str(video), "--checkpoint", str(checkpoint), "--out", str(out), "--precision", "bf16",
                 "--no-progress", "--topk", "4"]) == 0
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    bf16 = adamml.load(checkpoint, precision="bf16").predict(video, topk=4)
    assert dict(zip(record["classes"], record["scores"], strict=True)) == pytest.approx(_scores(bf16.top), abs=1e-5)
    from adamml.scale.manifest import Manifest

    assert Manifest(tmp_path / "bf16.manifest.jsonl").run["precision"] == "bf16"


def test_predict_out_refuses_to_resume_with_another_checkpoint_or_options(run_dir: Path, checkpoint: Path, video: Path,
                                                                          tmp_path: Path, capsys) -> None:
    from adamml.api import checkpoint_digest
    from adamml.cli import main
    from adamml.scale.manifest import Manifest

    other = _save(tmp_path / "other", "adamml", seed=1)
    out = tmp_path / "p.jsonl"
    common = ["predict", str(video), "--out", str(out), "--no-progress"]
    assert main([*common, "--checkpoint", str(checkpoint)]) == 0
    first = out.read_text()
    assert Manifest(tmp_path / "p.manifest.jsonl").run["checkpoint_sha256"] == checkpoint_digest(checkpoint)
    capsys.readouterr()
    assert main([*common, "--checkpoint", str(other)]) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("adamml predict")]
    assert "checkpoint_sha256" in line and str(out) in line
    assert main([*common, "--checkpoint", str(checkpoint), "--topk", "2"]) == 2
    assert "topk" in capsys.readouterr().err
    assert out.read_text() == first  # nothing mixed in
    assert main([*common, "--checkpoint", str(run_dir)]) == 0  # the same file through its run folder
    assert "skipped 1" in capsys.readouterr().out
