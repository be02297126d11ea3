"""``adamml flops``: the GFLOPs of a model configuration, counted from the real modules."""

from __future__ import annotations

import argparse
import json
import sys

from adamml.config import ConfigError
from adamml.config_files import load_config
from adamml.models.flops import flops_report, format_report, to_gmacs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="a YAML file or a shipped config name")
    parser.add_argument(
        "--segments", type=int, default=None, help="segments per video (default: eval segments)"
    )
    parser.add_argument("--raw", action="store_true", help="raw FLOPs (2 per multiply-add)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("overrides", nargs="*", help="config overrides: section.key=value, e.g. data.clip.crop_size=112")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
        report = flops_report(cfg, args.segments)
    except (ConfigError, ValueError) as exc:
        print(f"adamml flops: {exc}", file=sys.stderr)
        return 2
    if args.json:
        out = dict(report, unit="flops" if args.raw else "gmacs")
        if not args.raw:
            out = to_gmacs(out)
        print(json.dumps(out, indent=2))
    else:
        print(format_report(report, raw=args.raw))
    return 0
