"""What a run displays, logs or how it is scheduled must not change what it learns: the tiny
config trained with progress bars, TensorBoard, validation frequency, loader workers or a
kill-and-resume flipped gives bit-identical weights in every stage it ran.

Stage 1 runs one epoch here, so its ``best.pt`` (stage 3's start) is its only epoch whatever
the validation frequency: validating more often offers ``best.pt`` more candidates, a choice
of checkpoint rather than a change to any training step.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from adamml.config_files import load_config
from adamml.runtime.distributed import Runtime

MODALITIES = ("rgb", "audio")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from adamml.data.cache import VideoCache
    from adamml.data.catalog import discover
    from adamml.data.extract import extract_videos
    from adamml.data.synth import generate_dataset

    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, seed=0, train_per_class=1, val_per_class=1, duration_s=2.0, progress=False, workers=1)
    cache = VideoCache(root / "cache", config(root, root / "unused").data.decode)
    for split in ("train", "val"):
        entries, _ = discover(root, split)
        assert not extract_videos(entries, cache, workers=1, progress=False).failed
    return root


def config(root: Path, out: Path, *extra: str):
    """The tiny config on the 12-class synthetic set, every stage a few short epochs."""
    return load_config(
        "tiny",
        [
            f"data.root={root}",
            f"train.output_dir={out}",
            "model.num_classes=12",
            "train.batch_size=4",
            "train.unimodal.epochs=1",
            "train.adamml.warmup_epochs=1",
            "train.adamml.epochs=1",
            "train.adamml.finetune_epochs=1",
            "train.adamml.lr_steps=[]",
            "train.adamml.policy_pretrain_epochs=1",
            "train.eval_every=1",
            "train.progress=false",
            *extra,
        ],
    )


def train(root: Path, out: Path, *extra: str, resume: bool = False, fault_after_steps: int | None = None) -> dict:
    """Stage 1 for each modality, then stage 3 (policy pre-training, warm-up, alternating
    recognition/policy epochs, fine-tune); returns each stage's final weights."""
    from adamml.training.stages import stage_dir, train_adamml, train_unimodal

    cfg = config(root, out, *extra)
    torch.set_num_threads(1)
    for modality in MODALITIES:
        train_unimodal(cfg, modality, Runtime(), resume=resume)
    train_adamml(cfg, Runtime(), resume=resume, fault_after_steps=fault_after_steps)
    dirs = [stage_dir(cfg, "unimodal", m) for m in MODALITIES] + [stage_dir(cfg, "adamml")]
    return {d.name: torch.load(d / "last.pt", weights_only=False)["model"] for d in dirs}


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for stage in a:
        assert a[stage].keys() == b[stage].keys(), stage
        differ = [k for k in a[stage] if not torch.equal(a[stage][k], b[stage][k])]
        assert not differ, f"{stage}: {len(differ)} of {len(a[stage])} tensors differ, e.g. {differ[:3]}"


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory) -> dict:
    return train(data_root, tmp_path_factory.mktemp("reference"))


@pytest.mark.parametrize(
    "switch",
    [
        "train.progress=true",
        "train.eval_every=0",
        "data.num_workers=2",
    ],
)
def test_a_switch_that_does_not_change_the_steps_gives_identical_weights(switch, data_root, reference, tmp_path):
    assert_identical(reference, train(data_root, tmp_path, switch))


def test_tensorboard_off_gives_identical_weights(data_root, reference, tmp_path, monkeypatch):
    """Without tensorboard installed the logger writes the CSV only."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    assert_identical(reference, train(data_root, tmp_path))
    assert not (tmp_path / "adamml" / "tensorboard").exists()


def test_a_kill_mid_epoch_then_resume_gives_identical_weights(data_root, reference, tmp_path):
    from adamml.training.engine import TrainingInterrupted
    from adamml.training.schedule import adamml_schedule

    cfg = config(data_root, tmp_path)
    assert [p.trains for p in adamml_schedule(cfg.train.adamml)] == ["recognition", "recognition", "policy", "recognition"]
    steps = 12 // 4  # 12 training videos, batch 4
    with pytest.raises(TrainingInterrupted):  # killed inside the policy epoch
        train(data_root, tmp_path, fault_after_steps=2 * steps + 2)
    state = torch.load(tmp_path / "adamml" / "last.pt", weights_only=False)
    assert state["epoch"] == 2
    # Warm-up and the first alternating recognition pass: no decay yet (the temperature
    # decays after each alternating epoch's policy pass, as the reference's).
    assert state["task"]["temperature"]["value"] == pytest.approx(cfg.train.adamml.temperature)
    assert_identical(reference, train(data_root, tmp_path, resume=True))


def test_the_gradient_scaler_state_survives_a_kill_and_resume(data_root, tmp_path, monkeypatch):
    """fp16 runs scale their loss; the scale grows every few overflow-free steps and must
    carry on after a resume rather than start again (a real CPU scaler stands in for CUDA's)."""
    from adamml.training import driver
    from adamml.training.engine import TrainingInterrupted
    from adamml.training.stages import train_unimodal

    monkeypatch.setattr(driver, "make_scaler", lambda runtime, precision: torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=5))
    torch.set_num_threads(1)
    whole = config(data_root, tmp_path / "whole", "train.unimodal.epochs=2")
    train_unimodal(whole, "rgb", Runtime())
    killed = config(data_root, tmp_path / "killed", "train.unimodal.epochs=2")
    with pytest.raises(TrainingInterrupted):  # 3 steps an epoch: killed in the second
        train_unimodal(killed, "rgb", Runtime(), fault_after_steps=5)
    assert torch.load(tmp_path / "killed" / "unimodal_rgb" / "last.pt", weights_only=False)["scaler"]["_growth_tracker"] == 3
    train_unimodal(killed, "rgb", Runtime(), resume=True)

    a = torch.load(tmp_path / "whole" / "unimodal_rgb" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "killed" / "unimodal_rgb" / "last.pt", weights_only=False)
    assert a["scaler"] == b["scaler"] == {**a["scaler"], "scale": 2.0**11, "_growth_tracker": 1}
    assert_identical({"unimodal_rgb": a["model"]}, {"unimodal_rgb": b["model"]})
