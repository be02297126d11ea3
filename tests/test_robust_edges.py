"""Edge cases that once ended in a traceback or a misleading line: a last training batch of
one clip, an all-silent dataset, a table without the fusion stage, CSV labels of two kinds, and
bf16 asked of a CPU that only emulates it, in training as in inference."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from media import make_video

from adamml.cli import main

CLASSES = ["bee", "cow"]


def _write_dataset(root: Path, train_per_class: tuple[int, ...], *, audio: bool = True) -> Path:
    """train/<class>/*.mp4 and val/<class>/*.mp4 (one validation clip per class)."""
    for c, name in enumerate(CLASSES):
        for split, count in (("train", train_per_class[c]), ("val", 1)):
            for i in range(count):
                make_video(root / split / name / f"{name}{i}.mp4", num_frames=16, fps=8.0, height=40, width=40,
                           freq=300.0 + 500 * c, seed=100 * c + 10 * (split == "val") + i,
                           audio_channels=1 if audio else None)
    return root


def _train(*args: str) -> tuple[int, str]:
    """``adamml train --config tiny`` in this process: exit code, stdout and stderr together."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(["train", "--config", "tiny", "--workers", "1", *args])
    return code, out.getvalue()


def test_a_last_training_batch_of_one_clip_trains_without_a_batch_norm_error(tmp_path: Path) -> None:
    # 5 training videos in batches of 4: the last batch would hold one clip (stage 1 trains on one
    # clip per video), which batch norm cannot normalise over.
    root = _write_dataset(tmp_path / "data", (3, 2))
    code, text = _train("--data", str(root), "--output", str(tmp_path / "run"), "--stage", "unimodal",
                        "--modality", "rgb", "train.unimodal.epochs=1", "train.batch_size=4")
    assert code == 0, text
    assert "Expected more than 1 value per channel" not in text
    assert (tmp_path / "run" / "unimodal_rgb" / "best.pt").is_file()


def test_only_a_last_batch_of_one_clip_is_left_out_and_evaluation_keeps_every_video() -> None:
    from adamml.data.loader import make_loader
    from adamml.runtime.distributed import Runtime

    class Clips(list):
        num_segments = 1

    class Segments(list):
        num_segments = 4  # 4 clips per video: a batch of one video still normalises

    def sizes(dataset, train: bool = True) -> list[int]:
        return [len(b) for b in make_loader(dataset, 4, Runtime(), train=train, seed=0, num_workers=0)]

    assert sizes(Clips(range(5))) == [4]
    assert sizes(Clips(range(6))) == [4, 2]
    assert sizes(Clips(range(5)), train=False) == [4, 1]
    assert sizes(Segments(range(5))) == [4, 1]
