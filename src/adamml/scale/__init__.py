"""Extraction and batch prediction over a video corpus on Ray Data (``--engine ray``).

One row per video flows through a Ray Data pipeline; the work done for each row is the local
engine's own per-video code (:func:`adamml.data.extract.extract_one`,
:func:`adamml.inference.pipeline.prediction_dataset` / :meth:`adamml.Model.predict_samples`),
so both engines write the same cache bytes and the same predictions. A :class:`Manifest`
records every video's status, so a killed run is rerun and continues where it stopped.

Ray is an optional extra (``pip install adamml[ray]``) and is imported only when a Ray engine
runs; nothing here imports it at module level.
"""

from adamml.scale.manifest import Manifest

__all__ = ["Manifest"]
