"""Checkpoints are data, not code: every load is ``weights_only``; a file that would run code is refused."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from adamml.cli import main
from adamml.runtime.checkpoint import (
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


class _Call:
    """Pickles as a call of ``os.system``: what a booby-trapped checkpoint carries."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _booby_trapped(tmp_path):
    marker = tmp_path / "the_call_ran"
    path = tmp_path / "shared.pt"
    torch.save({"kind": "adamml", "model": {}, "config": {"name": _Call(f"touch '{marker}'")}}, path)
    return path, marker


def test_predict_and_evaluate_refuse_a_checkpoint_carrying_a_pickled_call(tmp_path, capsys):
    path, marker = _booby_trapped(tmp_path)
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not looked at: the checkpoint is read first")
    for argv in (["predict", "--checkpoint", str(path), str(video)], ["evaluate", "--checkpoint", str(path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert f"{path}: refused: it holds a pickled posix.system" in err
        assert not marker.exists()
    # The control: unpickling the same file the old way does run the call.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_a_saved_checkpoint_is_plain_data_with_rng_states_that_restore(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = {"rng": rng_state(), "metrics": {"score": np.float64(0.75), "rates": np.array([0.5, 1.0])}, "best": -np.inf}
    save_checkpoint(state, tmp_path / "last.pt")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    loaded = torch.load(tmp_path / "last.pt", weights_only=True)  # plain torch, no allowlist
    assert type(loaded["metrics"]["score"]) is float and loaded["metrics"]["score"] == 0.75
    assert torch.equal(loaded["metrics"]["rates"], torch.tensor([0.5, 1.0], dtype=torch.float64))
    set_rng_state(loaded["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


def test_an_object_that_is_not_data_fails_when_saving_not_when_loading(tmp_path):
    with pytest.raises(TypeError, match="not set"):
        save_checkpoint({"oops": {1, 2}}, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_checkpoints_written_before_rng_states_were_tensors_still_load(tmp_path):
    """Earlier versions saved numpy's RNG state as an array; those files stay loadable."""
    np.random.seed(5)
    old = {"kind": "unimodal", "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}}
    torch.save(old, tmp_path / "old.pt")
    expected = float(np.random.rand())
    state = load_checkpoint(tmp_path / "old.pt")
    set_rng_state(state["rng"])
    assert float(np.random.rand()) == expected


def test_a_damaged_or_foreign_file_is_a_one_line_checkpoint_error(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save(torch.zeros(2), tmp_path / "tensor.pt")
    with pytest.raises(CheckpointError, match="not an adamml checkpoint"):
        load_checkpoint(tmp_path / "tensor.pt")
