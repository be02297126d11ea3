"""The reference recipe: losses and headline metrics per dataset, and the like."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adamml.config_files import load_config
from adamml.data.catalog import headline_metric
from adamml.training.loss import classification_loss


def test_multi_label_sets_train_with_cross_entropy_like_the_reference():
    logits = torch.randn(3, 4)
    multi_hot = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 1], [0, 0, 1, 0]], dtype=torch.float32)
    batch = {"label": torch.tensor([1, 0, 2]), "multi_hot": multi_hot}
    got = classification_loss(logits, batch, multi_label=True)
    soft = multi_hot / multi_hot.sum(dim=1, keepdim=True)
    expected = -(soft * logits.log_softmax(dim=1)).sum(dim=1).mean()
    torch.testing.assert_close(got, expected)
    # One label per video: exactly the single-label cross-entropy.
    single = {"label": torch.tensor([1, 3, 2]), "multi_hot": F.one_hot(torch.tensor([1, 3, 2]), 4).float()}
    torch.testing.assert_close(
        classification_loss(logits, single, multi_label=True), F.cross_entropy(logits, single["label"])
    )


def test_binary_cross_entropy_is_an_option_for_multi_label_sets_only():
    logits = torch.randn(2, 3)
    multi_hot = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    batch = {"label": torch.tensor([0, 1]), "multi_hot": multi_hot}
    torch.testing.assert_close(
        classification_loss(logits, batch, multi_label=True, loss="bce"),
        F.binary_cross_entropy_with_logits(logits, multi_hot),
    )
    with pytest.raises(ValueError, match="train.loss"):
        classification_loss(logits, batch, multi_label=False, loss="bce")


@pytest.mark.parametrize(
    "config, metric",
    [
        ("kinetics_sounds_rgb_audio", "top1"),
        ("activitynet_rgb_audio", "mAP"),
        ("fcvid_rgb_audio", "mAP"),
        ("mini_sports1m_rgb_audio", "mAP"),
    ],
)
def test_paper_configs_report_and_select_by_the_papers_metric_and_train_with_ce(config, metric):
    cfg = load_config(config)
    assert headline_metric(cfg.data.dataset, cfg.data.multi_label, cfg.data.metric) == metric
    assert cfg.train.loss == "ce"


def test_own_data_metric_follows_labels_unless_set():
    assert headline_metric("folder", False) == "top1"
    assert headline_metric("csv", True) == "mAP"
    assert headline_metric("mini_sports1m", False, "top1") == "top1"


def test_reference_training_crop_is_a_random_short_side_in_256_320_then_224():
    from adamml.modalities.spatial import choose_crop

    rng = np.random.default_rng(0)
    # Frames decoded at short side 256, crop 224: resizing to s in [256, 320] and cropping 224
    # takes a square of 256 * 224 / s in [179.2, 224] source pixels.
    crops = [choose_crop(256, 340, 224, train=True, rng=rng) for _ in range(400)]
    sizes = np.array([c.size for c in crops])
    assert sizes.min() >= 179 and sizes.max() <= 224 and len(set(sizes)) > 20
    assert 150 < sum(c.flip for c in crops) < 250
    # The same rule at another scale: short side 48 (the demo's) gives 33.6 .. 42.
    small = {choose_crop(48, 64, 40, train=True, rng=rng).size for _ in range(200)}
    assert min(small) >= 33 and max(small) <= 42
    centre = choose_crop(256, 340, 224, train=False)
    assert (centre.size, centre.top, centre.left, centre.flip) == (224, 16, 58, False)


def test_null_fps_decodes_every_frame_at_the_source_rate(tmp_path):
    from media import make_video

    from adamml.config import DecodeSettings
    from adamml.data.cache import settings_fingerprint
    from adamml.data.video import decode_video

    path = make_video(tmp_path / "v.mp4", num_frames=30, fps=12.0)
    decoded = decode_video(path, DecodeSettings(fps=None, short_side=32))
    assert decoded.fps == pytest.approx(12.0)
    assert decoded.num_frames == 30
    assert settings_fingerprint(DecodeSettings(fps=None)).startswith("fpssrc-")
    assert load_config("tiny", ["data.decode.fps=null"]).data.decode.fps is None


@pytest.mark.parametrize("trained_with, expected", [("dis", "dis"), ("tvl1", "tvl1")])
def test_predict_computes_flow_with_the_method_the_model_was_trained_with(
    tmp_path, monkeypatch, trained_with, expected
):
    from media import make_video

    import adamml
    import adamml.data.video as video_module
    from adamml.config import to_dict
    from adamml.models.build import build_model
    from adamml.runtime.checkpoint import save_checkpoint

    cfg = load_config("tiny", ["model.modalities=[flow]", f"data.decode.flow={trained_with}"])
    model = build_model("unimodal", cfg.model, cfg.data.clip)
    path = save_checkpoint(
        {"kind": "unimodal", "model": model.state_dict(), "config": to_dict(cfg), "model_config": to_dict(cfg.model)},
        tmp_path / "flow.pt",
    )
    methods = []
    real = video_module.compute_flow

    def spy(frames, method="tvl1", *args, **kwargs):
        methods.append(method)
        return real(frames, "dis", *args, **kwargs)  # DIS either way: fast

    import adamml.modalities.flow as flow_module

    monkeypatch.setattr(video_module, "compute_flow", spy)  # decoding for datasets
    monkeypatch.setattr(flow_module, "compute_flow", spy)  # the prediction pipeline's lazy flow
    video = make_video(tmp_path / "v.mp4", num_frames=24, fps=8.0, height=40, width=48)
    prediction = adamml.load(path).predict(video, topk=2)
    assert methods and set(methods) == {expected}
    assert len(prediction.top) == 2


def test_reference_stack_normalisation_matches_the_reference_images():
    from adamml.modalities.flow import flow_clip
    from adamml.modalities.rgbdiff import rgbdiff_clip
    from adamml.modalities.spatial import Crop

    crop = Crop(top=0, left=0, size=4, flip=False)
    flow = np.full((3, 4, 4, 2), 200, np.uint8)
    got = flow_clip(flow, np.array([[0]]), 2, crop, 4, reference=True)
    assert got.shape == (1, 1, 4, 4, 4)
    np.testing.assert_allclose(got, (200 / 255 - 0.5) / 0.226, rtol=1e-6)
    flipped = flow_clip(flow, np.array([[0]]), 2, Crop(0, 0, 4, True), 4, reference=True)
    np.testing.assert_allclose(flipped[0, 0, 0], -got[0, 0, 0], rtol=1e-6)

    frames = np.zeros((3, 4, 4, 3), np.uint8)
    frames[1] = 100  # a difference of +100, then -100
    diff = rgbdiff_clip(frames, np.array([[0]]), 2, crop, 4, reference=True)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    for j, d in enumerate((100, -100)):
        expected = (np.floor((d + 255) / 2) / 255 - mean) / std
        np.testing.assert_allclose(diff[0, 0, 3 * j : 3 * j + 3, 0, 0], expected, rtol=1e-5)
    assert load_config("kinetics_sounds_rgb_flow").data.clip.stack_norm == "reference"
    assert load_config("fcvid_rgb_audio").data.clip.stack_norm == "reference"
    assert load_config("tiny").data.clip.stack_norm == "adamml"


def test_plan_shows_the_papers_recipe_without_data(capsys):
    from adamml.cli import main

    # data.root (data/kinetics_sounds) does not exist here: the plan reads no data.
    assert main(["train", "--config", "kinetics_sounds_rgb_audio", "--plan", "--nproc", "8"]) == 0
    out = capsys.readouterr().out
    assert "batch 72 global = 9 per process x 8 processes; sync_bn on" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    policy = [r for r in rows if r[1:3] == ["alternate", "policy"]]
    taus = [float(r[r.index("extractors") + 2]) for r in policy]
    assert len(taus) == 20 and taus[0] == 5.0 and taus[-1] == pytest.approx(2.54, abs=0.005)
    assert all(r[-1] == "no" for r in rows if r[1] == "warmup") and all(r[-1] == "yes" for r in policy)
    assert "fine-tune (epoch 46) starts from the best validated alternating checkpoint (best_alternate.pt)" in out
    assert main(["train", "--config", "kinetics_sounds_rgb_audio", "--plan", "--nproc", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.batch_size=72" in err[0]


@pytest.mark.parametrize("every", [1, 2, 3, 4])
def test_plan_validated_column_is_the_drivers_decision_and_alternating_epochs_are_reached(every, capsys):
    from adamml.cli import main
    from adamml.training.driver import validation_due
    from adamml.training.schedule import adamml_schedule, finetune_start

    cfg = load_config("kinetics_sounds_rgb_audio", [f"train.eval_every={every}"])
    schedule = adamml_schedule(cfg.train.adamml)
    due = [validation_due(cfg, schedule, e) for e in range(len(schedule))]
    assert main(["train", "--config", "kinetics_sounds_rgb_audio", "--plan", f"train.eval_every={every}"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [r[-1] == "yes" for r in rows] == due
    # Every every-th of the 30 epochs that may validate (20 policy passes, then 10 fine-tune epochs).
    alternating = [p for p, d in zip(schedule, due, strict=True) if d and p.block == "alternate"]
    assert len(alternating) == 20 // every and all(p.trains == "policy" for p in alternating)
    assert not any(d for p, d in zip(schedule, due, strict=True) if p.block == "warmup")
    assert due[-1]
    assert finetune_start(schedule, every) == "best alternating"
    assert "starts from the best validated alternating checkpoint" in out


def test_plan_says_the_fine_tune_goes_on_from_the_last_epoch_when_no_alternating_epoch_validates(capsys):
    from adamml.cli import main

    assert main(["train", "--config", "kinetics_sounds_rgb_audio", "--plan", "train.eval_every=0"]) == 0
    out = capsys.readouterr().out
    assert "goes on from the last alternating epoch: no alternating epoch is validated" in out
    assert "best_alternate.pt" not in out


@pytest.mark.parametrize(
    "config",
    ["kinetics_sounds_rgb_audio", "activitynet_rgb_audio", "fcvid_rgb_audio", "mini_sports1m_rgb_audio"],
)
def test_catalogue_datasets_evaluate_on_their_catalogues_evaluation_split(config):
    from adamml.data.catalog import evaluation_split

    cfg = load_config(config)
    assert cfg.data.val_split == evaluation_split(cfg.data.dataset)
    assert evaluation_split("fcvid") == evaluation_split("mini_sports1m") == "test"


def test_a_catalogue_dataset_without_its_evaluation_split_is_an_error_not_a_carve(tmp_path, tiny_video):
    from adamml.data.datasets import DatasetError
    from adamml.runtime.distributed import Runtime
    from adamml.training.prepare import prepare_run

    first = (Path(__file__).parents[1] / "src/adamml/data/classlists/kinetics_sounds.txt").read_text().splitlines()[0]
    folder = tmp_path / "ks" / "train" / first.strip()
    folder.mkdir(parents=True)
    for i in range(4):
        shutil.copy(tiny_video, folder / f"v{i}.mp4")
    cfg = load_config("kinetics_sounds_rgb_audio", [f"data.root={tmp_path / 'ks'}", f"train.output_dir={tmp_path / 'run'}"])
    with pytest.raises(DatasetError, match=r"no 'val' split; a catalogue dataset is never carved out of train"):
        prepare_run(cfg, Runtime())
    assert not (tmp_path / "run" / "splits").exists()


def test_a_frozen_policy_still_samples_its_decisions_in_the_warm_up():
    """Warm-up trains the recognition networks on the policy's *sampled* decisions, as the
    reference (its frozen policy keeps drawing Gumbel samples): two seeds, two draws."""
    from adamml.models.adamml import build_adamml
    from adamml.training.engine import Temperature, adamml_step
    from adamml.training.schedule import adamml_schedule

    cfg = load_config("tiny")
    model = build_adamml(cfg.model, cfg.data.clip)
    warmup = adamml_schedule(cfg.train.adamml)[0]
    assert warmup.block == "warmup" and warmup.trains == "recognition"
    model.train()
    model.freeze_policy()
    model.policy.eval()  # what the stage-3 task's set_modes does to the frozen side
    clip = cfg.data.clip
    g = torch.Generator().manual_seed(0)
    batch = {
        "rgb": torch.randn(4, clip.num_segments, clip.frames_per_segment, 3, clip.crop_size, clip.crop_size, generator=g),
        "audio": torch.randn(4, clip.num_segments, *model.recognition["audio"].input_shape(clip), generator=g),
        "label": torch.zeros(4, dtype=torch.long),
    }
    step = adamml_step(torch.ones(2), 10.0, False, Temperature(5.0))
    draws = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        draws.append(step(model, batch, warmup).decisions.detach())
    assert not torch.equal(draws[0], draws[1])
    assert not all(p.requires_grad for p in model.policy.parameters())
