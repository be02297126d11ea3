"""``adamml predict --engine ray``: decode in CPU tasks, predict in batched model actors.

One row per video. Stage 1, ``_decode_row`` (one CPU each): the local engine's
:func:`~adamml.inference.predict.prediction_dataset` decodes the file and builds the policy's
and the sub-networks' inputs. Stage 2, ``_Predictor`` actors (one GPU each where the cluster
has GPUs, else one CPU each): :func:`~adamml.inference.predict.predict_samples` on batches,
running the policy and only the sub-networks it selects. The driver writes the JSON lines
and the manifest (:func:`adamml.inference.batch.predict_to_jsonl`). Videos and the checkpoint
must be readable at the same paths on every node (a shared file system).
"""

from __future__ import annotations

import pickle
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from adamml.scale.extract import MAX_BLOCKS
from adamml.scale.runtime import cluster_gpus, connect, quiet_ray_data

__all__ = ["ray_records", "plan_actors"]


def _decode_row(row: dict[str, Any], *, kind: str, model_cfg, cfg, class_names: list[str]) -> dict[str, Any]:
    """A Ray task: one video's model inputs, pickled (or its error), and the seconds it took."""
    from adamml.data.extract import limit_threads
    from adamml.inference.batch import error_record
    from adamml.inference.predict import prediction_dataset

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
        from adamml.inference.predict import load_predictor

        self.bundle = load_predictor(checkpoint)
        self.bundle[0].to(device).eval()
        self.topk, self.device = topk, device

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import json

        from adamml.inference.batch import prediction_record
        from adamml.inference.predict import predict_samples

        t0 = time.perf_counter()
        videos = [str(v) for v in batch["video"]]
        records: list[dict[str, Any]] = [{"video": v, "error": e} for v, e in zip(videos, batch["error"], strict=True)]
        good = [i for i, e in enumerate(batch["error"]) if not e]
        if good:
            samples = [pickle.loads(batch["sample"][i]) for i in good]
            for i, prediction in zip(good, predict_samples(samples, self.bundle, topk=self.topk, device=self.device), strict=True):
                prediction.video = videos[i]
                records[i] = prediction_record(prediction)
        seconds = (time.perf_counter() - t0) / max(len(videos), 1)
        return {
            "record": np.array([json.dumps(r) for r in records], dtype=object),
            "decode_s": np.asarray(batch["decode_s"], np.float64),
            "predict_s": np.full(len(videos), seconds),
        }


def plan_actors(actors: int | None = None) -> tuple[int, float, float, str]:
    """(actors, GPUs each, CPUs each, device): one actor per GPU where there are GPUs;
    otherwise half the cluster's CPUs (at least one), leaving the rest to decoding."""
    import ray

    gpus = cluster_gpus()
    if gpus:
        return actors or gpus, 1.0, 1.0, "cuda"
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return actors or max(1, cpus // 2), 0.0, 1.0, "cpu"


def ray_records(
    videos: list[str],
    checkpoint: str | Path,
    *,
    topk: int = 5,
    batch_size: int = 8,
    actors: int | None = None,
    address: str | None = None,
    timings: list[tuple[float, float]] | None = None,
) -> Iterator[dict[str, Any]]:
    """Prediction records of ``videos`` as the Ray pipeline finishes them (any order).

    ``timings``, if given, receives (decode seconds, predict seconds) per video: the
    per-stage figures from which a cluster's throughput is estimated (docs/scale-out.md).
    """
    import json

    from adamml.inference.predict import load_predictor

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
            batch_size=batch_size, concurrency=count, num_gpus=gpus, num_cpus=cpus, batch_format="numpy",
        )
    )
    for row in dataset.iter_rows():
        if timings is not None:
            timings.append((float(row["decode_s"]), float(row["predict_s"])))
        yield json.loads(row["record"])
