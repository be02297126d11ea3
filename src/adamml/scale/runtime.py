"""Joining a Ray cluster, or starting a local one: the one place that imports ``ray``."""

from __future__ import annotations

import logging
import os
from typing import Any

from adamml.errors import AdamMLError

__all__ = ["RayNotInstalledError", "import_ray", "connect", "quiet_ray_data", "cluster_gpus"]


class RayNotInstalledError(AdamMLError, ImportError):
    """``--engine ray`` without Ray: say how to get it."""


def import_ray() -> Any:
    try:
        # ray is optional (adamml[ray]): only when the Ray engine runs
        import ray
        import ray.data  # noqa: F401  (the engine needs Ray Data, the `ray[data]` extra)
    except ImportError as exc:
        raise RayNotInstalledError(
            f"--engine ray needs Ray Data ({exc}); install it with `pip install 'adamml[ray]'` "
            "or use the default --engine local"
        ) from None
    return ray


def connect(address: str | None = None, *, num_cpus: int | None = None) -> Any:
    """Use the running Ray (as a test fixture starts it), join ``address`` / ``RAY_ADDRESS``,
    or start a local Ray with this machine's CPUs. Returns the ``ray`` module."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS") or None
    ray.init(
        address=address,
        num_cpus=None if address else num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        configure_logging=True,
    )
    quiet_ray_data(ray)
    return ray


def quiet_ray_data(ray: Any) -> None:
    """Our own progress bar and summary say what happened; Ray Data's logs stay in its files."""
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "bars disabled"


def cluster_gpus() -> int:
    # ray is optional (adamml[ray]): only when the Ray engine runs
    import ray

    return int(ray.cluster_resources().get("GPU", 0))
