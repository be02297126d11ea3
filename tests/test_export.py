"""``adamml export``: a checkpoint becomes a folder of safetensors weights, config.json and a
model card, that loads without unpickling into the same model, and refuses to load when it
was changed or written by another adamml version."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import pytest
import torch

from adamml.cli import main
from adamml.config import to_dict
from adamml.config_files import load_config
from adamml.export.format import CONFIG_FILE, WEIGHTS_FILE, PackageError
from adamml.export.package import export_package, model_from_package, read_package
from adamml.inference.pipeline import Predictor
from adamml.models.adamml import build_adamml
from adamml.models.build import model_from_checkpoint
from adamml.runtime.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
CLASSES = ["low", "mid", "high", "none"]


def tiny_checkpoint(path: Path, overrides: list[str] | None = None, thresholds: list[float] | None = None,
                    quota: list[int] | None = None) -> Path:
    """An untrained tiny AdaMML saved as training saves it, optimiser state included."""
    cfg = load_config("tiny", overrides or [])
    torch.manual_seed(0)
    model = build_adamml(cfg.model, cfg.data.clip)
    if thresholds is not None:
        model.policy.use_thresholds.copy_(torch.tensor(thresholds))
    if quota is not None:
        model.policy.use_quota.copy_(torch.tensor(quota, dtype=torch.float32))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimiser.step()
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint({
        "kind": "adamml", "epoch": 3, "model": model.state_dict(), "config": to_dict(cfg), "model_config": to_dict(cfg.model),
        "class_names": CLASSES, "optimizers": {"recognition": optimiser.state_dict()}, "optimizer_block": "alternate",
        "metrics": {"top1": 0.625, "mAP": 0.5, "selection_rgb": 0.4, "selection_audio": 0.9, "gflops": 0.05},
        "best_record": {"epoch": 3, "score": 0.625, "selection_rgb": 0.4}, "task": {"temperature": {"value": 4.8}},
    }, path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("run") / "adamml" / "best.pt")


@pytest.fixture(scope="module")
def exported(checkpoint: Path, tmp_path_factory) -> Path:
    return export_package(checkpoint, tmp_path_factory.mktemp("export") / "model")


def test_the_folder_holds_weights_config_and_a_model_card(exported: Path, checkpoint: Path) -> None:
    assert sorted(p.name for p in exported.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((exported / CONFIG_FILE).read_text())
    assert config["class_names"] == CLASSES and config["modalities"] == ["rgb", "audio"]
    assert config["thresholds"] == {"rgb": 0.0, "audio": 0.0}
    assert set(config["gflops_per_segment"]) == {"rgb", "audio", "policy"} and config["gflops_per_segment"]["rgb"] > 0
    assert config["decode"]["fps"] == 8.0 and config["clip"]["crop_size"] == 32 and config["flow_method"] == "tvl1"
    assert config["adamml_version"] and len(config["source"]["sha256"]) == 64
    assert config["fusion"]["name"] == "weighted" and len(config["fusion"]["weights"]) == 2
    assert config["checkpoint"]["metrics"]["top1"] == 0.625
    assert not {"optimizers", "rng", "scaler", "optimizer_block"} & set(config["checkpoint"])
    card = (exported / "README.md").read_text()
    front = card.split("---")[1]
    for line in ("library_name: adamml", "pipeline_tag: video-classification", "license: apache-2.0", "type: top1", "value: 0.625"):
        assert line in front
    assert "selection rate rgb | 0.400" in card and "| rgb |" in card


def test_the_folder_is_smaller_than_the_checkpoint_by_the_optimiser_state(exported: Path, checkpoint: Path) -> None:
    buffer = io.BytesIO()
    torch.save(load_checkpoint(checkpoint)["optimizers"], buffer)
    folder = sum(p.stat().st_size for p in exported.iterdir())
    assert folder <= checkpoint.stat().st_size - buffer.getbuffer().nbytes


def test_loading_never_unpickles(exported: Path, checkpoint: Path, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("unpickling while loading an export folder")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    state = read_package(exported)
    loaded = model_from_package(state)
    monkeypatch.undo()
    kind, model_cfg = loaded.kind, loaded.model_cfg
    reference = load_checkpoint(checkpoint)
    assert kind == "adamml" and model_cfg.modalities == ["rgb", "audio"] and state["class_names"] == CLASSES
    assert set(state) >= {"kind", "model", "config", "model_config", "class_names", "metrics", "best_record"}
    assert "optimizers" not in state and state["config"] == json.loads(json.dumps(reference["config"]))
    for key, value in reference["model"].items():
        assert torch.equal(state["model"][key], value), key


def test_the_exported_model_predicts_as_the_checkpoint(exported: Path, checkpoint: Path, tmp_path: Path) -> None:
    from media import make_video

    video = make_video(tmp_path / "clip.mp4", num_frames=100, fps=25.0)
    results = []
    for loaded in (model_from_checkpoint(checkpoint), model_from_package(exported)):
        predictor = Predictor(loaded, device="cpu")
        prepared = predictor.prepare(video)
        margins = predictor.decide(prepared)
        results.append((margins, predictor.finish(prepared, topk=4)))
    (m1, p1), (m2, p2) = results
    torch.testing.assert_close(m2, m1, rtol=0, atol=1e-5)
    assert p1.segments == p2.segments and [n for n, _ in p1.top] == [n for n, _ in p2.top]
    assert max(abs(a - b) for (_, a), (_, b) in zip(p1.top, p2.top, strict=True)) <= 1e-5
    assert p1.gflops == p2.gflops


def test_a_folder_from_another_version_is_refused_in_one_line(exported: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "old"
    shutil.copytree(exported, copy)
    config = json.loads((copy / CONFIG_FILE).read_text())
    config["adamml_version"] = "0.0.1"
    (copy / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(PackageError, match="exported by adamml 0.0.1") as info:
        read_package(copy)
    assert "\n" not in str(info.value) and str(copy / CONFIG_FILE) in str(info.value)


def test_changed_weights_are_refused(exported: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "changed"
    shutil.copytree(exported, copy)
    with open(copy / WEIGHTS_FILE, "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(PackageError, match="SHA-256 does not match"):
        read_package(copy)


def test_export_from_a_run_folder_takes_its_adamml_checkpoint(checkpoint: Path, tmp_path: Path, capsys) -> None:
    run = checkpoint.parent.parent
    assert main(["export", str(run), "--to", str(tmp_path / "pkg"), "--license", "cc-by-4.0"]) == 0
    assert "exported best.pt (adamml, rgb, audio)" in capsys.readouterr().out
    assert "license: cc-by-4.0" in (tmp_path / "pkg" / "README.md").read_text()
    assert read_package(tmp_path / "pkg")["kind"] == "adamml"


def test_bad_sources_are_one_line_errors(tmp_path: Path, checkpoint: Path, exported: Path, capsys) -> None:
    assert main(["export", str(tmp_path / "missing.pt"), "--to", str(tmp_path / "out")]) == 2
    assert main(["export", str(exported), "--to", str(tmp_path / "out")]) == 2
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main(["export", str(checkpoint), "--to", str(tmp_path / "busy")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 3 and "no such checkpoint" in err and "an export folder already" in err
    assert "is not an export folder" in err and (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_int8_needs_onnx_and_calibration_videos(checkpoint: Path, tmp_path: Path, capsys) -> None:
    assert main(["export", str(checkpoint), "--to", str(tmp_path / "q"), "--quantize", "int8"]) == 2
    assert "give --format onnx and --calibrate VIDEOS" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()
