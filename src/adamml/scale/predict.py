"""``adamml predict [--out OUT] [--engine ray]``: decode in CPU tasks, predict in batched model actors.

One row per video. Stage 1, ``_decode_row`` (one CPU each): the local engine's
:func:`~adamml.inference.predict.prediction_dataset` decodes the file and builds the policy's
and the sub-networks' inputs. Stage 2, ``_Predictor`` actors (one GPU each where the cluster
has GPUs, else one CPU each): :func:`~adamml.inference.predict.predict_samples` on batches,
running the policy and only the sub-networks it selects. The driver writes the JSON lines
and the manifest (:func:`adamml.scale.batch.predict_to_jsonl`, which also serves
``--engine local``). Videos and the checkpoint must be readable at the same paths on every
node (a shared file system).
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from adamml.data.extract import limit_threads
from adamml.inference import predict as local
from adamml.inference.predict import load_predictor, planned, predict_samples, prediction_dataset
from adamml.scale.batch import (
    error_record,
    expand_videos,
    local_records,
    predict_to_jsonl,
    prediction_record,
)
from adamml.scale.extract import MAX_BLOCKS
from adamml.scale.runtime import cluster_gpus, connect, import_ray, quiet_ray_data

__all__ = ["ray_records", "plan_actors", "add_arguments", "run"]


def _decode_row(row: dict[str, Any], *, kind: str, model_cfg, cfg, class_names: list[str]) -> dict[str, Any]:
    """A Ray task: one video's model inputs, pickled (or its error), and the seconds it took."""
    limit_threads()
    t0 = time.perf_counter()
    video = row["video"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a missing audio track is in the record
            sample = prediction_dataset([video], kind, model_cfg, cfg, class_names)[0]
        payload, error = pickle.dumps(sample), ""
    except Exception as exc:  # a broken video is recorded; the run goes on
        payload, error = b"", error_record(video, exc)["error"]
    return {"video": video, "sample": payload, "error": error, "decode_s": time.perf_counter() - t0}


class _Predictor:
    """A Ray actor holding the model; called on batches of decoded rows."""

    def __init__(self, checkpoint: str, topk: int, device: str) -> None:
        self.bundle, self.plan = planned(load_predictor(checkpoint), device)  # the device's execution plan
        self.topk, self.device = topk, device

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        videos = [str(v) for v in batch["video"]]
        records: list[dict[str, Any]] = [{"video": v, "error": e} for v, e in zip(videos, batch["error"], strict=True)]
        good = [i for i, e in enumerate(batch["error"]) if not e]
        if good:
            samples = [pickle.loads(batch["sample"][i]) for i in good]
            for i, prediction in zip(good, predict_samples(samples, self.bundle, topk=self.topk, device=self.device, plan=self.plan), strict=True):
                prediction.video = videos[i]
                records[i] = prediction_record(prediction)
        seconds = (time.perf_counter() - t0) / max(len(videos), 1)
        return {
            "record": np.array([json.dumps(r) for r in records], dtype=object),
            "decode_s": np.asarray(batch["decode_s"], np.float64),
            "predict_s": np.full(len(videos), seconds),
            "finished_at": np.full(len(videos), time.time()),
        }


def plan_actors(actors: int | None = None) -> tuple[int, float, float, str]:
    """(actors, GPUs each, CPUs each, device). With GPUs: one actor per GPU, and the decode
    tasks run apart on the CPUs, feeding them. Without: one actor per CPU; Ray Data then fuses
    decoding into the actor (same resources), so each CPU decodes and predicts its own videos
    without shipping samples between processes."""
    # ray is optional (adamml[ray]): only when the Ray engine runs
    import ray

    gpus = cluster_gpus()
    if gpus:
        return actors or gpus, 1.0, 1.0, "cuda"
    return actors or max(1, int(ray.cluster_resources().get("CPU", 1))), 0.0, 1.0, "cpu"


def ray_records(
    videos: list[str],
    checkpoint: str | Path,
    *,
    topk: int = 5,
    batch_size: int = 8,
    actors: int | None = None,
    address: str | None = None,
    timings: list[tuple[float, float, float]] | None = None,
) -> Iterator[dict[str, Any]]:
    """Prediction records of ``videos`` as the Ray pipeline finishes them (any order).

    ``timings``, if given, receives (decode seconds, predict seconds, when the actor finished
    it) per video: the per-stage figures from which a cluster's throughput is estimated
    (docs/scale-out.md).
    """
    ray = connect(address)
    quiet_ray_data(ray)
    _, kind, model_cfg, cfg, class_names = load_predictor(checkpoint)  # what the decode tasks need
    count, gpus, cpus, device = plan_actors(actors)
    dataset = (
        ray.data.from_items([{"video": v} for v in videos], override_num_blocks=min(len(videos), MAX_BLOCKS))
        .map(_decode_row, fn_kwargs={"kind": kind, "model_cfg": model_cfg, "cfg": cfg, "class_names": class_names}, num_cpus=1)
        .map_batches(
            _Predictor,
            fn_constructor_kwargs={"checkpoint": str(Path(checkpoint).absolute()), "topk": topk, "device": device},
            batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=count), num_gpus=gpus, num_cpus=cpus,
            batch_format="numpy",
        )
    )
    for row in dataset.iter_rows():
        if timings is not None:
            timings.append((float(row["decode_s"]), float(row["predict_s"]), float(row["finished_at"])))
        yield json.loads(row["record"])


# ----------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``adamml predict``: the local command's options, plus a corpus into JSON lines."""

    local.add_arguments(parser)
    videos = next(a for a in parser._actions if a.dest == "videos")
    videos.metavar, videos.help = "VIDEO_OR_DIR_OR_LIST", "video files; with --out also folders and list files (.txt/.csv)"
    batch = parser.add_argument_group("a corpus into JSON lines (see docs/scale-out.md)")
    batch.add_argument("--out", type=Path, default=None, help="write one JSON line per video here; resumable, with a manifest beside it")
    batch.add_argument("--engine", default="local", choices=("local", "ray"), help="local (default) or ray (Ray Data; `pip install 'adamml[ray]'`); ray needs --out")
    batch.add_argument("--address", default=None, help="ray: a running cluster (default: RAY_ADDRESS, else start a local Ray)")
    batch.add_argument("--batch-size", type=int, default=8, help="ray: videos per model call (default 8)")
    batch.add_argument("--actors", type=int, default=None, help="ray: model replicas (default: one per GPU, else one per CPU)")
    batch.add_argument("--manifest", type=Path, default=None, help="per-video status file (default: OUT with .manifest.jsonl)")
    batch.add_argument("--retry-failed", action="store_true", help="redo videos an earlier run recorded as failed")
    batch.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:

    if args.out is None:
        if args.engine != "local":
            print(f"adamml predict: --engine {args.engine} writes JSON lines: give --out predictions.jsonl", file=sys.stderr)
            return 2
        return local.run(args)
    videos = expand_videos(args.videos)
    if args.engine == "ray":
        import_ray()  # fail before anything is written when the extra is missing

        def produce(todo: list[str]):
            return ray_records(todo, args.checkpoint, topk=args.topk, batch_size=args.batch_size,
                               actors=args.actors, address=args.address)
    else:
        bundle = local.load_predictor(args.checkpoint)

        def produce(todo: list[str]):
            return local_records(todo, bundle, topk=args.topk, device=args.device)

    print(f"{len(videos)} videos -> {args.out}", file=sys.stderr)
    report = predict_to_jsonl(
        videos, args.out, produce, manifest=args.manifest, retry_failed=args.retry_failed,
        progress=not args.no_progress,
    )
    print(report.summary())
    return 1 if report.failed else 0
