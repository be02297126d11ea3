"""The Ray engine of ``adamml predict --out OUT --engine ray``: decode in CPU tasks, predict in
batched model actors.

One row per video. Stage 1, ``_decode_row`` (one CPU each):
:func:`~adamml.inference.pipeline.prediction_dataset` decodes the file and builds the policy's
and the sub-networks' inputs. Stage 2, ``_Predictor`` actors (one GPU each where the cluster
has GPUs, else one CPU each): :meth:`adamml.Model.predict_samples` on batches, running the
policy and only the sub-networks it selects. The driver writes the JSON lines and the
manifest (:func:`adamml.scale.batch.predict_to_jsonl`, which also serves ``--engine local``).
Videos and the checkpoint must be readable at the same paths on every node (a shared file
system).
"""

from __future__ import annotations

import json
import pickle
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from adamml.data.extract import limit_threads
from adamml.inference.pipeline import prediction_dataset
from adamml.models.build import model_from_checkpoint
from adamml.scale.batch import error_record, prediction_record
from adamml.scale.extract import MAX_BLOCKS
from adamml.scale.runtime import cluster_gpus, connect, quiet_ray_data

__all__ = ["ray_records", "plan_actors"]


def _decode_row(row: dict[str, Any], *, spec) -> dict[str, Any]:
    """A Ray task: one video's model inputs, pickled (or its error), and the seconds it took."""
    limit_threads()
    t0 = time.perf_counter()
    video = row["video"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a missing audio track is in the record
            sample = prediction_dataset([video], spec)[0]
        payload, error = pickle.dumps(sample), ""
    except Exception as exc:  # a broken video is recorded; the run goes on
        payload, error = b"", error_record(video, exc)["error"]
    return {"video": video, "sample": payload, "error": error, "decode_s": time.perf_counter() - t0}


class _Predictor:
    """A Ray actor holding the model; called on batches of decoded rows."""

    def __init__(self, checkpoint: str, topk: int, device: str, precision: str = "fp32") -> None:
        from adamml.api import load  # in the actor's process: the model under the device's plan

        self.model = load(checkpoint, device=device, precision=precision)
        self.topk = topk

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        videos = [str(v) for v in batch["video"]]
        records: list[dict[str, Any]] = [{"video": v, "error": e} for v, e in zip(videos, batch["error"], strict=True)]
        good = [i for i, e in enumerate(batch["error"]) if not e]
        if good:
            samples = [pickle.loads(batch["sample"][i]) for i in good]
            for i, prediction in zip(good, self.model.predict_samples(samples, topk=self.topk), strict=True):
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
    precision: str = "fp32",
) -> Iterator[dict[str, Any]]:
    """Prediction records of ``videos`` as the Ray pipeline finishes them (any order).

    ``timings``, if given, receives (decode seconds, predict seconds, when the actor finished
    it) per video: the per-stage figures from which a cluster's throughput is estimated
    (docs/scale-out.md).
    """
    ray = connect(address)
    quiet_ray_data(ray)
    from adamml.api import resolve_checkpoint  # the layer above: its checkpoint resolution, once

    checkpoint = resolve_checkpoint(checkpoint)
    spec = model_from_checkpoint(checkpoint).spec  # what the decode tasks need (no network)
    count, gpus, cpus, device = plan_actors(actors)
    dataset = (
        ray.data.from_items([{"video": v} for v in videos], override_num_blocks=min(len(videos), MAX_BLOCKS))
        .map(_decode_row, fn_kwargs={"spec": spec}, num_cpus=1)
        .map_batches(
            _Predictor,
            fn_constructor_kwargs={"checkpoint": str(Path(checkpoint).absolute()), "topk": topk, "device": device,
                                   "precision": precision},
            batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=count), num_gpus=gpus, num_cpus=cpus,
            batch_format="numpy",
        )
    )
    for row in dataset.iter_rows():
        if timings is not None:
            timings.append((float(row["decode_s"]), float(row["predict_s"]), float(row["finished_at"])))
        yield json.loads(row["record"])
