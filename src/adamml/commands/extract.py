"""``adamml extract``: decode every video of a split once into the cache, on this machine
(``--workers`` processes, adamml.data.extract) or as Ray Data tasks (``--engine ray``,
adamml.scale.extract)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from adamml.config import DATA_FORMATS, DecodeSettings
from adamml.config_files import load_config
from adamml.data.cache import VideoCache
from adamml.data.catalog import discover, split_exists
from adamml.data.extract import default_workers, ensure_cached
from adamml.data.formats import DatasetError
from adamml.data.types import VideoEntry
from adamml.modalities.table import MODALITIES, check_modalities
from adamml.scale.extract import extract_videos_ray


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None,
                        help="take decode settings, modalities and splits from this config (what "
                        "`adamml train --config` will read), e.g. default")
    parser.add_argument("--data", type=Path, default=None, help="dataset root (default: the config's data.root)")
    parser.add_argument("--split", default=None,
                        help="split to extract (default: train; with --config, its train and val splits)")
    parser.add_argument("--dataset", default=None, help="a catalogue name (list files, class list)")
    parser.add_argument(
        "--modalities",
        default=None,
        help="comma-separated; flow is computed (slowly, for TV-L1) only if listed "
        "(default: the config's, else rgb,audio)",
    )
    parser.add_argument("--flow", default=None, choices=("tvl1", "dis"), help="optical flow method (default tvl1)")
    defaults = DecodeSettings()
    parser.add_argument("--fps", type=float, default=None, help=f"frames per second (default: the config's, else {defaults.fps:g})")
    parser.add_argument("--short-side", type=int, default=None, help=f"resize short side to this (default {defaults.short_side})")
    parser.add_argument("--sample-rate", type=int, default=None, help=f"audio sample rate (default {defaults.sample_rate})")
    parser.add_argument("--cache", type=Path, default=None, help="cache root (default: DATA/cache)")
    parser.add_argument("--workers", type=int, default=None, help="parallel processes (default: every core)")
    parser.add_argument("--strict", action="store_true", help="a video without audio is a failure")
    parser.add_argument("--image-format", default="jpeg", choices=("jpeg", "raw"), help="frame storage")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    engine = parser.add_argument_group("engine (see docs/scale-out.md)")
    engine.add_argument(
        "--engine", default="local", choices=("local", "ray"),
        help="local: --workers processes on this machine (default); ray: Ray Data tasks on a "
        "cluster or a local Ray (needs `pip install 'adamml[ray]'`)",
    )
    engine.add_argument("--address", default=None, help="ray: a running cluster (default: RAY_ADDRESS, else start a local Ray)")
    engine.add_argument("--manifest", type=Path, default=None, help="ray: per-video status file (default: CACHE/<settings>/manifest.jsonl)")
    engine.add_argument("--retry-failed", action="store_true", help="ray: redo videos an earlier run recorded as failed")


def open_splits(args: argparse.Namespace) -> tuple[dict[str, list[VideoEntry]], VideoCache]:
    """The entries of each split to extract and the cache they go to: from ``--config``
    (its decode settings, modalities, train and val splits) and the explicit options."""
    decode, dataset, splits, cache_root = DecodeSettings(), args.dataset, [args.split or "train"], args.cache
    data = args.data
    modalities = ["rgb", "audio"]
    if args.config:
        cfg = load_config(args.config)
        decode = dataclasses.replace(cfg.data.decode)
        data = data or (Path(cfg.data.root) if cfg.data.root else None)
        modalities = list(cfg.model.modalities)
        dataset = dataset or (cfg.data.dataset if cfg.data.dataset not in DATA_FORMATS else None)
        cache_root = cache_root or (Path(cfg.data.cache) if cfg.data.cache else None)
        if args.split is None:
            splits = [cfg.data.train_split] + ([cfg.data.val_split] if data and split_exists(data, cfg.data.val_split, dataset) else [])
    if data is None:
        raise DatasetError("give --data ROOT (or a --config with data.root)")
    if args.modalities:
        modalities = args.modalities.split(",")
    modalities = check_modalities(modalities)
    found = {split: discover(data, split, dataset=dataset)[0] for split in splits}
    flow = args.flow or decode.flow or "tvl1"
    settings = DecodeSettings(
        fps=args.fps if args.fps is not None else decode.fps,
        short_side=args.short_side if args.short_side is not None else decode.short_side,
        sample_rate=args.sample_rate if args.sample_rate is not None else decode.sample_rate,
        flow=flow if any(MODALITIES[m].reads == "flow" for m in modalities) else None,
        strict_audio=args.strict or decode.strict_audio,
    )
    cache = VideoCache(cache_root or Path(data) / "cache", settings, image_format=args.image_format)
    counts = ", ".join(f"{len(v)} in split {k!r}" for k, v in found.items())
    print(f"{counts}; cache {cache.folder}", file=sys.stderr)
    return found, cache


def run(args: argparse.Namespace) -> int:
    try:
        found, cache = open_splits(args)
    except ValueError as exc:  # DatasetError is a ValueError
        print(f"adamml extract: {exc}", file=sys.stderr)
        return 2
    if args.engine == "ray":
        unique: dict[tuple, VideoEntry] = {}
        for entries in found.values():
            for entry in entries:
                unique.setdefault((str(entry.path), entry.frame_range), entry)
        report = extract_videos_ray(  # a missing Ray is a one-line error (RayNotInstalledError)
            list(unique.values()), cache, address=args.address, manifest=args.manifest,
            retry_failed=args.retry_failed, progress=not args.no_progress,
        )
        print(report.summary())
        return 1 if report.failed else 0
    _, report = ensure_cached(found, cache, workers=args.workers or default_workers(), progress=not args.no_progress)
    if not report.done and not report.failed:
        print(f"nothing to extract: all {report.skipped} videos are cached")
    return 1 if report.failed else 0
