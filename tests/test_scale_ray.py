"""The Ray engine (`--engine ray`) against the local one: same cache bytes, same predictions,
failures named, a killed run resumed without redoing finished videos.

Ray runs on 2 CPUs in one session fixture (starting it takes seconds); the tests that need it
are skipped, with the reason, where Ray is not installed (`pip install 'adamml[ray]'`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from media import make_garbage, make_truncated, make_video

from adamml.config import DecodeSettings
from adamml.data.cache import VideoCache
from adamml.data.extract import extract_videos
from adamml.scale.manifest import DONE, FAILED, PENDING, Manifest

SRC = str(Path(__file__).resolve().parents[1] / "src")
SETTINGS = DecodeSettings(fps=8.0, short_side=32, sample_rate=8000, flow="dis")


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray with 2 CPUs for the whole session; yields its address for subprocesses."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'adamml[ray]')")
    pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'adamml[ray]')")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _videos(folder: Path, n: int, **kwargs) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [make_video(folder / f"clip{i:02d}.mp4", num_frames=16, fps=8.0, seed=i, **kwargs) for i in range(n)]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


# ----------------------------------------------------------------------------- manifest


def test_manifest_keeps_the_last_status_and_survives_a_partial_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    log = Manifest(path)
    log.add_pending(["a", "b", "c"])
    log.mark([{"video": "a", "status": DONE}, {"video": "b", "status": FAILED, "error": "b: corrupt"}])
    with path.open("a") as handle:
        handle.write('{"video": "c", "sta')  # a kill in the middle of a write
    again = Manifest(path)
    assert [again.status(v) for v in "abcd"] == [DONE, FAILED, PENDING, PENDING]
    assert again.failures() == [("b", "b: corrupt")]
    again.mark([{"video": "c", "status": DONE}])
    assert Manifest(path).counts() == {DONE: 2, FAILED: 1}
    with pytest.raises(ValueError, match="unknown status"):
        again.mark([{"video": "d", "status": "maybe"}])


# ----------------------------------------------------------------------------- extraction


def test_ray_extract_writes_the_same_cache_bytes_as_local(ray_cluster, tmp_path: Path) -> None:
    from adamml.scale.extract import extract_videos_ray

    videos = _videos(tmp_path / "v", 4) + [make_video(tmp_path / "v" / "silent.mp4", num_frames=16, fps=8.0, audio_channels=None)]
    local = extract_videos(videos, VideoCache(tmp_path / "local", SETTINGS), progress=False)
    remote = extract_videos_ray(videos, VideoCache(tmp_path / "ray", SETTINGS), progress=False)
    assert (remote.done, remote.failed, remote.missing_audio) == (local.done, [], local.missing_audio) == (5, [], [str(videos[-1])])
    a = VideoCache(tmp_path / "local", SETTINGS).entries()
    b = VideoCache(tmp_path / "ray", SETTINGS).entries()
    assert [p.name for p in a] == [p.name for p in b] and len(a) == 5
    for x, y in zip(a, b, strict=True):
        assert x.read_bytes() == y.read_bytes(), x.name


def test_ray_extract_names_a_corrupt_file_and_does_the_others(ray_cluster, tmp_path: Path) -> None:
    from adamml.scale.extract import extract_videos_ray

    videos = _videos(tmp_path / "v", 3)
    bad = [make_garbage(tmp_path / "v" / "garbage.mp4"), make_truncated(videos[0], tmp_path / "v" / "cut.mp4", 0.3)]
    cache = VideoCache(tmp_path / "cache", SETTINGS)
    report = extract_videos_ray(videos + bad, cache, progress=False)
    assert report.done == 3 and all(cache.has(v) for v in videos)
    assert sorted(path for path, _ in report.failed) == sorted(str(b) for b in bad)
    summary = report.summary()
    assert all(str(b) in summary for b in bad)
    log = Manifest(cache.folder / "manifest.jsonl")
    assert [log.status(str(v)) for v in videos] == [DONE] * 3
    assert [log.status(str(b)) for b in bad] == [FAILED] * 2 and "garbage.mp4" in log.error(str(bad[0]))
    # a rerun redoes nothing, names the earlier failures, and retries them only when asked
    again = extract_videos_ray(videos + bad, cache, progress=False)
    assert (again.done, again.skipped, len(again.failed)) == (0, 3, 2)
    assert "earlier run" in again.summary()
    retried = extract_videos_ray(videos + bad, cache, progress=False, retry_failed=True)
    assert (retried.done, retried.skipped, len(retried.failed)) == (0, 3, 2)


def test_ray_extract_killed_midway_resumes_without_redoing_finished_videos(ray_cluster, tmp_path: Path) -> None:
    """A driver joined to the cluster (``--address``) is SIGKILLed once 2 videos are done;
    the rerun finishes the rest and leaves the finished cache files alone."""
    from adamml.data.catalog import discover
    from adamml.scale.extract import extract_videos_ray

    root = tmp_path / "data"
    for i in range(6):  # TV-L1 makes each video take a fraction of a second
        make_video(root / "train" / "a" / f"clip{i}.mp4", num_frames=12, fps=8.0, height=48, width=64, seed=i)
    settings = DecodeSettings(fps=8.0, short_side=48, sample_rate=8000, flow="tvl1")
    cache = VideoCache(tmp_path / "cache", settings)
    manifest = cache.folder / "manifest.jsonl"
    command = [
        sys.executable, "-m", "adamml.cli", "extract", "--engine", "ray", "--address", ray_cluster,
        "--data", str(root), "--cache", str(cache.root), "--modalities", "rgb,audio,flow",
        "--flow", "tvl1", "--fps", "8", "--short-side", "48", "--sample-rate", "8000", "--no-progress",
    ]
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600  # a loaded machine takes minutes to start Ray workers
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest.is_file() and Manifest(manifest).counts()[DONE] >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read()}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    before = Manifest(manifest)
    finished = [v for v, r in before.records.items() if r["status"] == DONE]
    assert 2 <= len(finished) < 6 and before.counts()[PENDING] == 6 - len(finished)
    stamps = {v: cache.entry_path(v).stat().st_mtime_ns for v in finished}
    entries, _ = discover(root, "train")
    report = extract_videos_ray(entries, cache, progress=False)
    assert report.skipped >= len(finished) and report.done == 6 - report.skipped and not report.failed
    assert len(cache.entries()) == 6
    assert {v: cache.entry_path(v).stat().st_mtime_ns for v in finished} == stamps  # not rewritten
    done_lines = [r["video"] for r in map(json.loads, manifest.read_text().splitlines()) if r["status"] == DONE]
    assert all(done_lines.count(v) == 1 for v in finished)  # each finished video recorded done once
    assert Manifest(manifest).counts() == {DONE: 6}


# ----------------------------------------------------------------------------- without Ray


def test_local_engine_runs_without_ray_and_ray_engine_says_how_to_install(tmp_path: Path, monkeypatch, capsys) -> None:
    from adamml.cli import main

    root = tmp_path / "data"
    _videos(root / "train" / "a", 2)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails, as without the extra
    base = ["extract", "--data", str(root), "--no-progress", "--sample-rate", "8000"]
    assert main(base) == 0
    assert "extracted 2" in capsys.readouterr().out
    assert main([*base, "--engine", "ray", "--cache", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("adamml extract: --engine ray needs Ray") and "pip install 'adamml[ray]'" in err[-1]


# ----------------------------------------------------------------------------- prediction


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An AdaMML model of the `tiny` config with seeded random weights, saved as training does."""
    import torch

    from adamml.config import to_dict
    from adamml.config_files import load_config
    from adamml.models.adamml import build_adamml
    from adamml.runtime.checkpoint import save_checkpoint

    cfg = load_config("tiny")
    torch.manual_seed(0)
    model = build_adamml(cfg.model, cfg.data.clip)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint({
        "kind": "adamml", "model": model.state_dict(), "config": to_dict(cfg),
        "model_config": to_dict(cfg.model), "class_names": ["w", "x", "y", "z"],
    }, path)
    return path


def _lines(path: Path) -> dict[str, dict]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    by_video = {r["video"]: r for r in records}
    assert len(by_video) == len(records), "a video appears twice"
    return by_video


def test_ray_predict_gives_the_local_predictions_and_names_a_corrupt_file(ray_cluster, tiny_checkpoint, tmp_path: Path, capsys) -> None:
    from adamml.cli import main

    folder = tmp_path / "videos"
    videos = _videos(folder, 5) + [make_video(folder / "silent.mp4", num_frames=16, fps=8.0, audio_channels=None)]
    bad = make_garbage(folder / "broken.mp4")
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"videos/{v.name}\n" for v in [*videos, bad]))  # relative to the list
    common = ["predict", "--checkpoint", str(tiny_checkpoint), "--no-progress", "--topk", "3"]
    assert main([*common, str(listing), "--out", str(tmp_path / "local.jsonl")]) == 1
    capsys.readouterr()
    assert main([*common, str(folder), "--engine", "ray", "--batch-size", "4", "--out", str(tmp_path / "ray.jsonl")]) == 1
    summary = capsys.readouterr().out
    assert "predicted 6" in summary and "failed 1" in summary and str(bad) in summary
    local, remote = _lines(tmp_path / "local.jsonl"), _lines(tmp_path / "ray.jsonl")
    assert sorted(local) == sorted(remote) == sorted(str(v) for v in [*videos, bad])
    assert "broken.mp4" in local[str(bad)]["error"] and "broken.mp4" in remote[str(bad)]["error"]
    for video in map(str, videos):
        a, b = local[video], remote[video]
        assert (a["classes"], a["decisions"], a["gflops"], a["audio_missing"]) == (
            b["classes"], b["decisions"], b["gflops"], b["audio_missing"]), video
        np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-5)
    assert remote[str(videos[-1])]["audio_missing"] and len(remote[str(videos[0])]["decisions"]) == 4
    manifest = Manifest(tmp_path / "ray.manifest.jsonl")
    assert manifest.counts(str(v) for v in videos) == {DONE: 6} and manifest.status(str(bad)) == FAILED


def test_predict_killed_midway_reruns_only_the_pending_videos(ray_cluster, tiny_checkpoint, tmp_path: Path) -> None:
    """The driver dies after 2 records (and mid-way through writing a line); the rerun asks the
    engine only for the rest, and every video ends up once in the output."""
    from adamml.scale.batch import predict_to_jsonl
    from adamml.scale.predict import ray_records

    videos = [str(v) for v in _videos(tmp_path / "v", 6)]
    out = tmp_path / "p.jsonl"

    class Killed(BaseException):
        pass

    def dies_after_two(todo):
        for n, record in enumerate(ray_records(todo, tiny_checkpoint, batch_size=1)):
            if n == 2:
                raise Killed
            yield record

    with pytest.raises(Killed):
        predict_to_jsonl(videos, out, dies_after_two, progress=False)
    first = _lines(out)
    assert len(first) == 2
    with out.open("a") as handle:
        handle.write('{"video": "' + videos[0][:10])  # the kill landed inside a write
    asked: list[str] = []

    def counting(todo):
        asked.extend(todo)
        return ray_records(todo, tiny_checkpoint, batch_size=4)

    report = predict_to_jsonl(videos, out, counting, progress=False)
    assert sorted(asked) == sorted(set(videos) - set(first))  # nothing finished is redone
    assert (report.done, report.skipped, report.failed) == (4, 2, [])
    final = _lines(out)
    assert sorted(final) == sorted(videos) and all(final[v] == first[v] for v in first)
    assert Manifest(tmp_path / "p.manifest.jsonl").counts(videos) == {DONE: 6}
    asked.clear()
    assert predict_to_jsonl(videos, out, counting, progress=False).skipped == 6 and asked == []


def test_local_batch_engine_runs_the_model_under_the_execution_plan_and_predicts_as_predict_does(tiny_checkpoint, tmp_path: Path) -> None:
    """The folder engine runs the model prepared once under the device's plan (fused,
    channels_last) and gives the file-by-file predictions of the same Model."""
    import adamml
    from adamml.models.execution import FusedConv2d
    from adamml.scale.batch import local_records

    videos = [str(v) for v in _videos(tmp_path, 2)]
    model = adamml.load(tiny_checkpoint)
    plan = model.plan
    assert plan.device == "cpu" and any(isinstance(m, FusedConv2d) for m in model.predictor.model.modules()) == plan.fuse_pointwise
    records = list(local_records(videos, model, topk=4))
    files = model.predict(videos, topk=4)
    for record, prediction in zip(records, files, strict=True):
        assert record["decisions"] == prediction.segments
        assert dict(zip(record["classes"], record["scores"], strict=True)) == pytest.approx(dict(prediction.top), abs=1e-5)
